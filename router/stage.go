// Package router turns a request into a pipeline: route matching, the Stage
// contract, pipeline composition, request keys and the stages that need no
// upstream knowledge of their own (headers, respond, redirect, split, mirror).
//
// router imports nothing of sekisho but http1, for the token grammar; the shard and scatter stages build
// on it, and the proxy package compiles configuration into its types.
package router

import (
	"errors"
	"fmt"
	"net/http"
)

// Stage is one step of a pipeline.
type Stage interface {
	// Wrap returns the handler for this stage; next is the rest of the
	// pipeline (nil for a terminal stage).
	Wrap(next http.Handler) (http.Handler, error)
}

// Terminal is implemented by stages that answer the request themselves
// (proxy, shard, scatter, split, respond, redirect). A pipeline ends with
// exactly one terminal stage.
type Terminal interface {
	Stage
	// Terminal marks the stage; it is never called.
	Terminal()
}

// ErrNoTerminal is returned by Compose for a pipeline that does not end in a
// terminal stage.
var ErrNoTerminal = errors.New("pipeline does not end in a terminal stage (proxy, shard, scatter, split, respond or redirect)")

// Compose builds the handler chain of a pipeline from its last stage
// backwards, so that stages[0] sees the request first. The last stage must be
// Terminal and no other may be.
func Compose(stages []Stage) (http.Handler, error) {
	if len(stages) == 0 {
		return nil, ErrNoTerminal
	}
	if _, ok := stages[len(stages)-1].(Terminal); !ok {
		return nil, ErrNoTerminal
	}
	var h http.Handler
	for i := len(stages) - 1; i >= 0; i-- {
		if _, ok := stages[i].(Terminal); ok && i != len(stages)-1 {
			return nil, fmt.Errorf("stage %d is terminal but is followed by %d more", i, len(stages)-1-i)
		}
		next, err := stages[i].Wrap(h)
		if err != nil {
			return nil, fmt.Errorf("stage %d: %w", i, err)
		}
		h = next
	}
	return h, nil
}

// Available is implemented by handlers that can tell whether they have
// somewhere to send a request right now (a pool with a ready endpoint). Stages
// that choose between handlers (shard with on_unavailable: next) ask it; a
// handler that does not implement it is taken as always available.
type Available interface {
	Available() bool
}
