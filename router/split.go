package router

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus"

	"sekisho/http1"
)

// ArmHeader is the request header that tells the upstream which arm of which
// experiment it serves, as "experiment=arm" elements.
const ArmHeader = "X-Sekisho-Arm"

// SplitBuckets is the number of buckets a split divides its users into; a
// weight is a share of these.
const SplitBuckets = 10000

// maxArmWeight bounds a weight so that scaling to buckets cannot overflow.
const maxArmWeight = 1_000_000

// Arm is one branch of a split: a name, a weight and the nested pipeline
// that serves the requests bucketed into it.
type Arm struct {
	// Name labels the arm in metrics, logs, ArmHeader and overrides.
	Name string
	// Weight is the arm's share, relative to the other arms' weights (they
	// need not sum to 100). Zero makes the arm reachable only by override.
	Weight int
	// Handler is the arm's pipeline; it is required and must be safe for
	// concurrent use.
	Handler http.Handler
}

// Split configures a split stage: an experiment that sends each user to one
// of its arms.
//
// A user's bucket is xxhash64(Name + "\x00" + key) mod SplitBuckets, so the
// same key lands in the same arm across requests, replicas and reloads, and
// experiments with different names bucket independently. Arms own contiguous
// bucket ranges in config order, sized by weight (scaled to SplitBuckets; the
// rounding falls to the last arm with a weight). A user therefore stays in an
// arm for as long as that arm's range only widens: growing the last arm (the
// usual canary layout, control first and the new version last) only adds
// users to it; the same holds for the first arm. Growing a middle arm shifts
// the ranges after it.
type Split struct {
	// Name is the experiment; it salts the hash and labels metrics. It is
	// required, and may not contain , ; = " \ or whitespace.
	Name string
	// Key finds the user in the request. A request without the key (and every
	// request when Key is zero) is bucketed at random, per request.
	Key Key
	// Arms are the branches, in config order.
	Arms []Arm
	// OverrideHeader, when set, names a request header that forces an arm.
	// Its value is a comma-separated list of elements: "arm" forces that arm
	// of this experiment, "experiment=arm" forces it only for the named
	// experiment (elements for other experiments are ignored, so one header
	// or cookie can steer nested splits). ArmHeader itself can be the
	// override header, but only of the outermost split: that split replaces
	// ArmHeader, so nested splits see only the outer element there. An
	// unknown arm is ignored and counted. The header wins over the cookie.
	// Empty: no override.
	OverrideHeader string
	// OverrideCookie, when set, names a cookie that forces an arm, with the
	// same syntax as OverrideHeader. Empty: no override.
	OverrideCookie string
	// Requests counts requests by arm; it must have the labels experiment
	// and arm. Nil counts nothing.
	Requests *prometheus.CounterVec
	// UnknownOverrides counts override elements that name no arm of this
	// experiment; it must have the label experiment. Nil counts nothing.
	UnknownOverrides *prometheus.CounterVec
}

// SplitStage is a compiled Split. It is terminal: it serves the request with
// the chosen arm's handler, after adding "experiment=arm" to ArmHeader of the
// request and to Info.Arm (nested splits join with ","). The first split on a
// request that carries an Info replaces any ArmHeader the client sent, so an
// upstream can trust it; nested splits append to it.
//
// A SplitStage is immutable and safe for concurrent use.
type SplitStage struct {
	name           string
	key            Key
	arms           []splitArm
	overrideHeader string
	overrideCookie string
	unknown        prometheus.Counter
	// salt is the digest state after Name and the separator; Bucket copies
	// it, so the name is hashed once and a bucket costs only the key.
	salt xxhash.Digest
}

type splitArm struct {
	name     string
	handler  http.Handler
	end      int    // the arm owns buckets [previous arm's end, end)
	marker   string // "experiment=arm"
	requests prometheus.Counter
}

// NewSplit validates s, reporting every problem at once (each a
// FieldError), and compiles it.
func NewSplit(s Split) (*SplitStage, error) {
	var errs []error
	if err := validLabelName(s.Name); err != nil {
		errs = append(errs, FieldErrorf("name", "name: %v", err))
	}
	if len(s.Arms) == 0 {
		errs = append(errs, FieldErrorf("arms", "no arms"))
	}
	total := 0
	seen := make(map[string]bool, len(s.Arms))
	for i, a := range s.Arms {
		if err := validLabelName(a.Name); err != nil {
			errs = append(errs, FieldErrorf(fmt.Sprintf("arms[%d].name", i), "arm %d: name: %v", i, err))
		} else if seen[a.Name] {
			errs = append(errs, FieldErrorf(fmt.Sprintf("arms[%d]", i), "arm %d: duplicate name %q", i, a.Name))
		}
		seen[a.Name] = true
		if a.Weight < 0 || a.Weight > maxArmWeight {
			errs = append(errs, FieldErrorf(fmt.Sprintf("arms[%d].weight", i), "arm %q: weight %d: want 0..%d", a.Name, a.Weight, maxArmWeight))
		} else {
			total += a.Weight
		}
		if a.Handler == nil {
			errs = append(errs, FieldErrorf(fmt.Sprintf("arms[%d].pipeline", i), "arm %q: no pipeline", a.Name))
		}
	}
	if len(s.Arms) > 0 && total == 0 {
		errs = append(errs, FieldErrorf("arms", "weights sum to 0: at least one arm needs a positive weight"))
	}
	if s.OverrideHeader != "" && !http1.ValidToken(s.OverrideHeader) {
		errs = append(errs, FieldErrorf("override_header", "override_header %q: not a header name", s.OverrideHeader))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("split %q: %w", s.Name, errors.Join(errs...))
	}

	st := &SplitStage{
		name:           s.Name,
		key:            s.Key,
		overrideCookie: s.OverrideCookie,
	}
	if s.OverrideHeader != "" {
		st.overrideHeader = textproto.CanonicalMIMEHeaderKey(s.OverrideHeader)
	}
	st.salt.Reset()
	_, _ = st.salt.WriteString(s.Name)
	_, _ = st.salt.WriteString("\x00")
	if s.UnknownOverrides != nil {
		c, err := s.UnknownOverrides.GetMetricWith(prometheus.Labels{"experiment": s.Name})
		if err != nil {
			return nil, fmt.Errorf("split %q: unknown overrides counter: %w", s.Name, err)
		}
		st.unknown = c
	}
	cum := 0
	for _, a := range s.Arms {
		cum += a.Weight
		arm := splitArm{
			name:    a.Name,
			handler: a.Handler,
			end:     cum * SplitBuckets / total,
			marker:  s.Name + "=" + a.Name,
		}
		if s.Requests != nil {
			c, err := s.Requests.GetMetricWith(prometheus.Labels{"experiment": s.Name, "arm": a.Name})
			if err != nil {
				return nil, fmt.Errorf("split %q: requests counter: %w", s.Name, err)
			}
			arm.requests = c
		}
		st.arms = append(st.arms, arm)
	}
	return st, nil
}

// validLabelName accepts names that can sit in a header element and a
// metric label unquoted.
func validLabelName(n string) error {
	if n == "" {
		return errors.New("empty")
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c <= ' ' || c >= 0x7f || strings.IndexByte(`,;="\`, c) >= 0 {
			return fmt.Errorf("%q: use letters, digits and punctuation other than , ; = \" \\", n)
		}
	}
	return nil
}

// Wrap returns the stage itself; next must be nil.
func (s *SplitStage) Wrap(next http.Handler) (http.Handler, error) {
	if next != nil {
		return nil, fmt.Errorf("split %q: a split stage ends the pipeline; put the rest in each arm", s.name)
	}
	return s, nil
}

// Terminal marks SplitStage as ending a pipeline.
func (s *SplitStage) Terminal() {}

// Bucket returns the bucket of key, in [0, SplitBuckets).
func (s *SplitStage) Bucket(key string) int {
	d := s.salt
	_, _ = d.WriteString(key)
	return int(d.Sum64() % SplitBuckets)
}

// ServeHTTP serves r with the chosen arm.
func (s *SplitStage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	arm := s.choose(r)
	if arm.requests != nil {
		arm.requests.Inc()
	}
	info := InfoFrom(r)
	switch {
	case info == nil:
		r.Header.Add(ArmHeader, arm.marker)
	case info.Arm == "":
		r.Header[ArmHeader] = []string{arm.marker}
		info.Arm = arm.marker
	default:
		r.Header.Add(ArmHeader, arm.marker)
		info.Arm += "," + arm.marker
	}
	arm.handler.ServeHTTP(w, r)
}

// choose picks the arm of r: an override, else the key's bucket, else a
// random bucket. It does not allocate.
func (s *SplitStage) choose(r *http.Request) *splitArm {
	if s.overrideHeader != "" {
		for _, v := range r.Header[s.overrideHeader] {
			if a := s.override(v); a != nil {
				return a
			}
		}
	}
	if s.overrideCookie != "" {
		if v, ok := cookieValue(r.Header["Cookie"], s.overrideCookie); ok {
			if a := s.override(v); a != nil {
				return a
			}
		}
	}
	var b int
	if k, ok := s.key.Value(r); ok {
		b = s.Bucket(k)
	} else {
		b = rand.IntN(SplitBuckets)
	}
	return s.armOf(b)
}

func (s *SplitStage) armOf(bucket int) *splitArm {
	for i := range s.arms {
		if bucket < s.arms[i].end {
			return &s.arms[i]
		}
	}
	return &s.arms[len(s.arms)-1]
}

// override returns the arm forced by an override value, counting each
// element that names no arm of this experiment.
func (s *SplitStage) override(v string) *splitArm {
	for v != "" {
		var elem string
		elem, v, _ = strings.Cut(v, ",")
		elem = strings.TrimSpace(elem)
		if elem == "" {
			continue
		}
		if exp, arm, ok := strings.Cut(elem, "="); ok {
			if strings.TrimSpace(exp) != s.name {
				continue
			}
			elem = strings.TrimSpace(arm)
		}
		for i := range s.arms {
			if s.arms[i].name == elem {
				return &s.arms[i]
			}
		}
		if s.unknown != nil {
			s.unknown.Inc()
		}
	}
	return nil
}

var _ Terminal = (*SplitStage)(nil)
