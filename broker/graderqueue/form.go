package graderqueue

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/url"

	"github.com/gradebroker/gradebroker/broker/platform"
)

// form is what api.php reads from a platform's POST: the token, the
// platform's name, and a solution file uploaded beside them.
type form struct {
	Token    string           // sToken
	Platform string           // sPlatform
	Solfile  *platform.Upload // the multipart file solfile, or nil
}

// errTooLarge is a body over the size limit.
var errTooLarge = errors.New("the request is larger than this broker accepts")

// maxParts bounds the parts of a multipart body, so that a body of many
// empty parts costs little.
const maxParts = 64

// parseForm reads an api.php request body of content type contentType, as
// PHP fills $_POST and $_FILES: application/x-www-form-urlencoded (PHP's
// http_build_query, what curl sends for a string) or multipart/form-data
// (a file upload). Fields other than sToken, sPlatform and the file
// solfile are ignored, as api.php ignores them; a field given twice is
// refused rather than one of the two picked. limit bounds the body.
func parseForm(contentType string, body io.Reader, limit int64) (form, error) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil && contentType != "" {
		return form{}, fmt.Errorf("the Content-Type %q does not parse; send a form: application/x-www-form-urlencoded or multipart/form-data", contentType)
	}
	switch mt {
	case "application/x-www-form-urlencoded", "multipart/form-data":
	default:
		return form{}, errors.New("api.php takes a form POST (application/x-www-form-urlencoded or multipart/form-data) with sToken and sPlatform")
	}
	b, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return form{}, fmt.Errorf("reading the request: %w", err)
	}
	if int64(len(b)) > limit {
		return form{}, errTooLarge
	}
	var f form
	seen := map[string]bool{}
	set := func(name, value string) error {
		if seen[name] {
			return fmt.Errorf("%s is given twice; give it once", name)
		}
		seen[name] = true
		switch name {
		case "sToken":
			f.Token = value
		case "sPlatform":
			f.Platform = value
		}
		return nil
	}
	if mt == "application/x-www-form-urlencoded" {
		values, err := url.ParseQuery(string(b))
		if err != nil {
			return form{}, fmt.Errorf("the form does not parse: %w", err)
		}
		for _, name := range []string{"sToken", "sPlatform"} {
			for _, v := range values[name] {
				if err := set(name, v); err != nil {
					return form{}, err
				}
			}
		}
		return f, nil
	}
	boundary := params["boundary"]
	if boundary == "" {
		return form{}, errors.New("the multipart/form-data Content-Type has no boundary")
	}
	mr := multipart.NewReader(bytes.NewReader(b), boundary)
	for n := 0; ; n++ {
		if n == maxParts {
			return form{}, fmt.Errorf("the form has more than %d parts", maxParts)
		}
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return f, nil
		}
		if err != nil {
			return form{}, fmt.Errorf("the multipart form does not parse: %w", err)
		}
		name := part.FormName()
		content, err := io.ReadAll(part)
		if err != nil {
			return form{}, fmt.Errorf("the multipart form does not parse: %w", err)
		}
		switch {
		case name == "solfile" && part.FileName() != "":
			if seen[name] {
				return form{}, errors.New("solfile is given twice; give it once")
			}
			seen[name] = true
			f.Solfile = &platform.Upload{Name: part.FileName(), Content: content}
		case (name == "sToken" || name == "sPlatform") && part.FileName() == "":
			if err := set(name, string(content)); err != nil {
				return form{}, err
			}
		}
	}
}
