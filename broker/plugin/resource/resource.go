// Package resource is the broker's built-in "resource" plugin: Trustee
// KBS's resource API, with values sealed at rest.
//
//	GET    /kbs/v0/resource/<repository>/<type>/<tag>   attested; policy; JWE answer
//	POST   /kbs/v0/resource/<repository>/<type>/<tag>   admin; body is the value
//	DELETE /kbs/v0/resource/<repository>/<type>/<tag>   admin
//	GET    /kbs/v0/resource                             admin; JSON list of paths
//
// Values live in store.Resources sealed with package seal under the key
// file, with the resource path as associated data, so a sealed value moved
// to another path in the database no longer opens.
package resource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
)

// Name is the plugin's name under /kbs/v0/.
const Name = "resource"

// Options configure the plugin.
type Options struct {
	// Resources stores the sealed values.
	Resources store.Resources
	// Sealer seals values under the key file.
	Sealer *seal.Sealer
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Plugin serves /kbs/v0/resource. It is safe for concurrent use.
type Plugin struct {
	opts Options
}

// New returns the resource plugin.
func New(opts Options) (*Plugin, error) {
	if opts.Resources == nil || opts.Sealer == nil {
		return nil, errors.New("resource: Options.Resources and Options.Sealer are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Plugin{opts: opts}, nil
}

// Name returns "resource".
func (p *Plugin) Name() string { return Name }

// Access says who may call method on a resource path: attested callers
// read, admins write and delete.
func (p *Plugin) Access(method string) plugin.Access {
	switch method {
	case http.MethodGet:
		return plugin.Attested
	case http.MethodPost, http.MethodDelete:
		return plugin.Admin
	default:
		return plugin.Denied
	}
}

// Encrypt is true for GET: values go out only as a JWE.
func (p *Plugin) Encrypt(method string) bool { return method == http.MethodGet }

// Decide is Access and Encrypt, but a GET of /kbs/v0/resource itself (the
// list of paths, as in Trustee) needs an admin.
func (p *Plugin) Decide(_ context.Context, req *plugin.Request) (plugin.Access, bool, error) {
	if req.Method == http.MethodGet && len(req.Path) == 0 {
		return plugin.Admin, false, nil
	}
	return p.Access(req.Method), p.Encrypt(req.Method), nil
}

// AAD is the associated data a value at path is sealed with.
func AAD(path string) []byte { return []byte("resource/" + path) }

// Handle serves one request.
func (p *Plugin) Handle(ctx context.Context, req *plugin.Request) (*plugin.Response, error) {
	if req.Method == http.MethodGet && len(req.Path) == 0 {
		return p.list(ctx)
	}
	if len(req.Path) != 3 {
		return nil, plugin.Errorf(http.StatusNotFound, "resource path has %d segments: want <repository>/<type>/<tag>", len(req.Path))
	}
	path := strings.Join(req.Path, "/")
	switch req.Method {
	case http.MethodGet:
		r, err := p.opts.Resources.Get(ctx, path)
		if errors.Is(err, store.ErrNotFound) {
			return nil, plugin.Errorf(http.StatusNotFound, "no resource at %s", path)
		}
		if err != nil {
			return nil, fmt.Errorf("resource %s: %w", path, err)
		}
		value, err := p.opts.Sealer.Open(r.Sealed, AAD(path))
		if err != nil {
			return nil, fmt.Errorf("resource %s: %w", path, err)
		}
		return &plugin.Response{ContentType: "application/octet-stream", Body: value}, nil
	case http.MethodPost:
		if len(req.Body) == 0 {
			return nil, plugin.Errorf(http.StatusBadRequest, "empty value: the request body is the resource value")
		}
		sealed, err := p.opts.Sealer.Seal(req.Body, AAD(path))
		if err != nil {
			return nil, fmt.Errorf("resource %s: %w", path, err)
		}
		if err := p.opts.Resources.Put(ctx, store.Resource{Path: path, Sealed: sealed, UpdatedAt: p.opts.Now()}); err != nil {
			return nil, fmt.Errorf("resource %s: %w", path, err)
		}
		return &plugin.Response{}, nil
	case http.MethodDelete:
		err := p.opts.Resources.Delete(ctx, path)
		if errors.Is(err, store.ErrNotFound) {
			return nil, plugin.Errorf(http.StatusNotFound, "no resource at %s", path)
		}
		if err != nil {
			return nil, fmt.Errorf("resource %s: %w", path, err)
		}
		return &plugin.Response{}, nil
	default:
		return nil, plugin.Errorf(http.StatusMethodNotAllowed, "resource does not serve %s", req.Method)
	}
}

func (p *Plugin) list(ctx context.Context) (*plugin.Response, error) {
	paths, err := p.opts.Resources.List(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("resource list: %w", err)
	}
	if paths == nil {
		paths = []string{}
	}
	body, err := json.Marshal(paths)
	if err != nil {
		return nil, fmt.Errorf("resource list: %w", err)
	}
	return &plugin.Response{Body: body}, nil
}
