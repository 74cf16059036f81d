package executor

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLogBuffer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		max    int64
		writes []string
		want   string
	}{
		{"empty", 10, nil, ""},
		{"fits", 10, []string{"abc", "defghij"}, "abcdefghij"},
		{"cut in one write", 4, []string{"abcdefgh"}, "ab\n[... 4 bytes of stderr cut ...]\ngh"},
		{"cut over many writes", 6, []string{"ab", "cdef", "ghij", "kl"}, "abc\n[... 6 bytes of stderr cut ...]\njkl"},
		{"long tail trimmed", 4, []string{"ab", strings.Repeat("x", 100), "yz"}, "ab\n[... 100 bytes of stderr cut ...]\nyz"},
		{"odd max", 5, []string{"abcdefgh"}, "ab\n[... 3 bytes of stderr cut ...]\nfgh"},
		{"whole characters", 4, []string{"ab", "\u00e9\u00e9\u00e9", "\u00e9"}, "ab\n[... 6 bytes of stderr cut ...]\n\u00e9"},
		{"split character", 4, []string{"ab", "xx\u00e9", "x"}, "ab\n[... 3 bytes of stderr cut ...]\n\ufffdx"},
		{"binary", 10, []string{"a\xffb"}, "a\ufffdb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := NewLogBuffer(tt.max)
			for _, w := range tt.writes {
				if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(w))
				}
			}
			if diff := cmp.Diff(tt.want, b.String()); diff != "" {
				t.Errorf("String (-want +got):\n%s", diff)
			}
		})
	}
}

func TestResultBuffer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		writes   []string
		want     string
		wantOver bool
	}{
		{"fits", []string{"ab", "cd"}, "abcd", false},
		{"exactly the cap", []string{"abcde"}, "abcde", false},
		{"over", []string{"abc", "def", "ghi"}, "abcde", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := NewResultBuffer(5)
			for _, w := range tt.writes {
				if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(w))
				}
			}
			got, over := b.Bytes()
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("bytes (-want +got):\n%s", diff)
			}
			if over != tt.wantOver {
				t.Errorf("over = %v, want %v", over, tt.wantOver)
			}
			select {
			case <-b.Overflow():
				if !tt.wantOver {
					t.Error("overflow signalled for output within the cap")
				}
			default:
				if tt.wantOver {
					t.Error("overflow not signalled")
				}
			}
		})
	}
}
