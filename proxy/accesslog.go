package proxy

import (
	"fmt"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"sekisho/proxy/config"
	"sekisho/router"
)

// accessLog writes one JSON line per request. Lines go through a buffered
// writer flushed every 250ms, so that a busy proxy does not pay a system
// call per request.
type accessLog struct {
	refs   atomic.Int64
	target string
	log    *zap.Logger
	sync   *zapcore.BufferedWriteSyncer
	file   *os.File
}

// accessFor returns the access log for target with a reference taken for
// one Runtime: the one in force when the target is unchanged, a new one
// otherwise; nil means off. Each Runtime releases its reference when it
// closes, and the last one closes the log, so no request writes to a
// closed log.
func (s *Server) accessFor(target string) (*accessLog, error) {
	if cur := s.rt.Load(); cur != nil && cur.access != nil && cur.access.target == target {
		cur.access.refs.Add(1)
		return cur.access, nil
	}
	return openAccessLog(target)
}

func openAccessLog(target string) (*accessLog, error) {
	a := &accessLog{target: target}
	a.refs.Store(1)
	var ws zapcore.WriteSyncer
	switch target {
	case "off", "":
		return nil, nil
	case "stdout":
		ws = zapcore.Lock(os.Stdout)
	case "stderr":
		ws = zapcore.Lock(os.Stderr)
	default:
		f, err := os.OpenFile(target, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("opening access log: %w", err)
		}
		a.file = f
		ws = f
	}
	a.sync = &zapcore.BufferedWriteSyncer{WS: ws, Size: 64 << 10, FlushInterval: 250 * time.Millisecond}
	enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{
		TimeKey:        "ts",
		MessageKey:     zapcore.OmitKey,
		LevelKey:       zapcore.OmitKey,
		LineEnding:     zapcore.DefaultLineEnding,
		EncodeTime:     zapcore.RFC3339NanoTimeEncoder,
		EncodeDuration: zapcore.MillisDurationEncoder,
	})
	a.log = zap.New(zapcore.NewCore(enc, a.sync, zapcore.InfoLevel))
	return a, nil
}

// write logs one request: status and bytes are what the client got; cut
// marks an answer that ended short of its framing (aborted upstream, or a
// write to the client failed), and is left out when false. A field with no
// value (no upstream or pool for a respond route, no Host from an HTTP/1.0
// client) is left out rather than written empty.
func (a *accessLog) write(info *router.Info, r *http.Request, status int, bytes int64, elapsed time.Duration, note string, cut bool) {
	var buf [20]zap.Field
	f := append(buf[:0], zap.String("listener", info.Listener))
	f = appendSet(f, "route", info.Route)
	f = append(f, zap.String("method", r.Method))
	f = appendSet(f, "host", r.Host)
	f = append(f,
		zap.String("path", r.URL.Path),
		zap.Int("status", status),
		zap.Int64("bytes", bytes),
		zap.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
	)
	f = appendSet(f, "client_ip", info.ClientIP)
	f = appendSet(f, "upstream", info.Upstream)
	f = appendSet(f, "pool", info.Pool)
	f = appendSet(f, "request_id", info.RequestID)
	if info.Shard != "" {
		f = append(f, zap.String("shard", info.Shard), zap.Bool("overflow", info.Overflow))
	}
	if info.Arm != "" {
		f = append(f, zap.String("arm", info.Arm))
	}
	if info.Leaves != "" {
		f = append(f, zap.String("leaves", info.Leaves))
	}
	if info.ClientCert != "" {
		f = append(f, zap.String("client_cert", info.ClientCert))
	}
	if cut {
		f = append(f, zap.Bool("cut", true))
	}
	if note != "" {
		f = append(f, zap.String("error", note))
	}
	a.log.Info("", f...)
}

// appendSet appends the field key: value unless value is empty.
func appendSet(f []zap.Field, key, value string) []zap.Field {
	if value == "" {
		return f
	}
	return append(f, zap.String(key, value))
}

// release drops one Runtime's reference; the last closes the log.
func (a *accessLog) release() {
	if a.refs.Add(-1) == 0 {
		a.close()
	}
}

// close flushes and closes the log.
func (a *accessLog) close() {
	a.sync.Stop()
	if a.file != nil {
		a.file.Close()
	}
}

// newLogger builds the process logger from the log section, and returns
// its level, which a reload may change in place.
func newLogger(lc config.Log) (*zap.Logger, zap.AtomicLevel, error) {
	var level zapcore.Level
	if err := level.UnmarshalText([]byte(lc.Level)); err != nil {
		return nil, zap.AtomicLevel{}, fmt.Errorf("log.level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.Encoding = lc.Format
	zc.Sampling = nil
	zc.DisableStacktrace = true
	zc.EncoderConfig.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	if lc.Format == "console" {
		zc.EncoderConfig = zap.NewDevelopmentEncoderConfig()
	}
	l, err := zc.Build()
	return l, zc.Level, err
}
