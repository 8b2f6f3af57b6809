package certs

import "fmt"

// Error is what LoadPair, LoadCAPool, ParseMinVersion, ParseCipherSuite and
// ParseCurve return: Err says what went wrong, and Error puts the package's
// "certs: " before it. A config error, which names the setting at fault
// instead, shows Err alone.
type Error struct {
	Err error
}

// Error returns "certs: " and Err's text.
func (e *Error) Error() string { return "certs: " + e.Err.Error() }

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

// KeyFileError marks a problem of a Pair's key file, as opposed to its
// certificate file: the key is unreadable, holds no usable private key, or
// is not the certificate's. File is the key file; Err is the cause (an
// *fs.PathError, ErrNoPrivateKey, ErrKeyMismatch or a parse error), and
// Error returns Err's text unchanged, the file being named around it.
type KeyFileError struct {
	File string
	Err  error
}

// Error returns Err's text.
func (e *KeyFileError) Error() string { return e.Err.Error() }

// Unwrap returns Err.
func (e *KeyFileError) Unwrap() error { return e.Err }

// errorf returns an *Error with the formatted cause.
func errorf(format string, args ...any) error {
	return &Error{Err: fmt.Errorf(format, args...)}
}
