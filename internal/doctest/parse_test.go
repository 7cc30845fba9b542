package doctest

import (
	"strings"
	"testing"
)

func TestParseMarkers(t *testing.T) {
	doc := "# t\n\n<!-- doctest: run expect=\"a \\\"b\\\"\" needs=jq -->\n```sh\necho a\n```\n\n" +
		"  <!-- doctest: skip reason=x -->\n  ```go\n  x := 1\n  ```\n"
	blocks, err := Parse("t.md", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 2 {
		t.Fatalf("%d blocks, want 2", len(blocks))
	}
	b := blocks[0]
	if b.Kind != "run" || b.Lang != "sh" || b.Line != 4 || b.Text != "echo a\n" || b.Attrs["expect"] != `a "b"` || b.Attrs["needs"] != "jq" {
		t.Errorf("block 0 = %+v", b)
	}
	if b := blocks[1]; b.Kind != "skip" || b.Text != "x := 1\n" || b.Attrs["reason"] != "x" {
		t.Errorf("block 1 = %+v", b)
	}
}

func TestParseRefuses(t *testing.T) {
	for name, doc := range map[string]string{
		"unmarked":           "text\n```sh\necho\n```\n",
		"marker not above":   "<!-- doctest: run -->\n\n```sh\necho\n```\n",
		"unknown kind":       "<!-- doctest: runn -->\n```sh\necho\n```\n",
		"skip without why":   "<!-- doctest: skip -->\n```sh\necho\n```\n",
		"bad attribute":      "<!-- doctest: run expect=\"x -->\n```sh\necho\n```\n",
		"duplicate":          "<!-- doctest: rego a=allow a=deny -->\n```rego\n```\n",
		"never closed":       "<!-- doctest: run -->\n```sh\necho\n",
		"unmarked tilde":     "~~~toml\na = 1\n~~~\n",
		"unmarked in a list": "1. step\n\n   ```sh\n   echo\n   ```\n",
	} {
		if _, err := Parse("t.md", []byte(doc)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(err.Error(), "t.md:") {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
	}
}

func TestSplitOutputs(t *testing.T) {
	outs := splitOutputs("\n@@doctest 0\na\n\n@@doctest 1\nb\n\n@@doctest 2\n", 3)
	if outs[0] == nil || *outs[0] != "a\n\n" || outs[1] == nil || *outs[1] != "b\n\n" || outs[2] == nil {
		t.Errorf("complete run: %v", outs)
	}
	// Block 1 failed: its end marker never came.
	outs = splitOutputs("\n@@doctest 0\na\n\n@@doctest 1\nb\n", 3)
	if outs[1] == nil || outs[2] != nil {
		t.Errorf("failed run: block 1 started, so outs[2] must be nil: %v", outs)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("<!-- doctest: run expect=\"x\" -->\n```sh\necho\n```\n"))
	f.Add([]byte("<!-- doctest: skip reason=\"a\\\"b\" -->\n~~~~\n```\n~~~~\n"))
	f.Add([]byte("```"))
	f.Fuzz(func(t *testing.T, data []byte) {
		blocks, err := Parse("f.md", data)
		if err != nil {
			return
		}
		for _, b := range blocks {
			if !Kinds[b.Kind] || (b.Kind == "skip" && b.Attrs["reason"] == "") {
				t.Fatalf("accepted block %+v", b)
			}
		}
	})
}
