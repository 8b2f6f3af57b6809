package config

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSyntaxErrorPositions holds each kind of YAML syntax error to the
// line and column (1-based) of the problem as a reader sees it.
func TestSyntaxErrorPositions(t *testing.T) {
	const top = "version: 1\nlisteners:\n  - name: edge\n"
	tests := []struct {
		name, text, want string
	}{
		{"unterminated flow sequence", top + "    listen: [127.0.0.1:0\n",
			"4:13: not valid YAML: did not find expected ',' or ']'"},
		{"unterminated flow sequence, more lines after", "a: 1\nb: [oops\nc: 2\n",
			"2:4: not valid YAML: did not find expected ',' or ']'"},
		{"unterminated flow sequence on line 1", "[oops\n",
			"1:1: not valid YAML: did not find expected ',' or ']'"},
		{"unterminated flow mapping", "a: 1\nb: {x: 1\nc: 2\n",
			"2:4: not valid YAML: did not find expected ',' or '}'"},
		{"unopened bracket", "a: ]\n",
			"1:4: not valid YAML: did not find expected node content"},
		{"bad indentation", "a:\n  b: 1\n c: 2\n",
			"3:2: not valid YAML: did not find expected key"},
		{"a bad line 10", "a: 1\nb: 2\nc: 3\nd: 4\ne: 5\nf: 6\ng: 7\nh: 8\ni: 9\n j: 10\nk: 11\n",
			"10:3: not valid YAML: mapping values are not allowed in this context"},
		{"a bad line 10, nested", "a:\n b: 2\n c: 3\n d: 4\n e: 5\n f: 6\n g: 7\n h: 8\n i: 9\n  j: 10\nk: 11\n",
			"10:4: not valid YAML: mapping values are not allowed in this context"},
		{"two colons on line 1", "a: b: c\n",
			"1:5: not valid YAML: mapping values are not allowed in this context"},
		{"tab indentation", "a:\n\tb: 1\n",
			"2:1: not valid YAML: found character that cannot start any token"},
		{"tab indentation after a line", "a:\n  b: 1\n\tc: 1\n",
			"3:1: not valid YAML: found a tab character that violates indentation"},
		{"unterminated double quote", "a: 1\nb: \"abc\nc: 2\n",
			"2:4: not valid YAML: found unexpected end of stream"},
		{"unterminated single quote", "a: 1\nb: 'abc\nc: 2\n",
			"2:4: not valid YAML: found unexpected end of stream"},
		{"reserved character", "a: 1\nb: @x\n",
			"2:4: not valid YAML: found character that cannot start any token"},
		{"mapping in a sequence", "a:\n  - 1\n  b: 2\n",
			"3:4: not valid YAML: did not find expected '-' indicator"},
		{"sequence after a mapping", "a: 1\n- b\n",
			"2:1: not valid YAML: did not find expected key"},
		{"unknown alias", "a: 1\nb: *nope\n",
			"2:4: not valid YAML: unknown anchor 'nope' referenced"},
		{"column counts characters", "a: 1\nb: ['é', [x\n",
			"2:10: not valid YAML: did not find expected ',' or ']'"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tc.text), func(string) (string, bool) { return "", false })
			var ce Errors
			require.ErrorAs(t, err, &ce)
			require.Len(t, ce, 1, "a syntax error is reported alone, once")
			assert.Equal(t, "f.yaml:"+tc.want, ce[0].Error())
		})
	}
}
