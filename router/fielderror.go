package router

import "fmt"

// FieldError is a problem with one setting of a stage, reported by a
// stage's Validate (or its constructor) so that a config can point at the
// setting at fault without reading the message. Field is the setting's
// YAML path within the stage ("status", "request.set", "leaves[2]",
// "arms[1].name"), or "" for the stage as a whole. Msg is the whole
// message, which names the setting as a reader expects ("status 303: want
// 301, 302, 307 or 308"); Error returns it unchanged.
type FieldError struct {
	Field string
	Msg   string
}

// Error returns Msg.
func (e FieldError) Error() string { return e.Msg }

// FieldErrorf returns a FieldError for field with the formatted message.
func FieldErrorf(field, format string, args ...any) error {
	return FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}
