package broker

import (
	"net/http"
	"strings"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/client/auth"
)

// PluginScopeType is the resource type of the scopes that name plugin
// requests: "plugin:<plugin>[/<segment>...]:<action>", the action being
// the lower-cased HTTP method ("get", "post", "put" or "delete"). A scoped
// token covers a plugin request when its access names exactly the
// request's plugin and path (no prefix matching) with the request's
// method among the actions.
const PluginScopeType = "plugin"

// PluginScope returns the scope a plugin request needs. It reports false
// for a request that no scope can name: a method plugins do not serve, or
// a path segment outside the scope grammar (upper-case letters, or a
// separator at either end of a segment); such requests need the
// attestation token itself.
func PluginScope(pluginName string, path []string, method string) (auth.Scope, bool) {
	action := strings.ToLower(method)
	if methodOf(action) == "" {
		return auth.Scope{}, false
	}
	var b strings.Builder
	b.WriteString(PluginScopeType + ":" + pluginName)
	for _, seg := range path {
		b.WriteByte('/')
		b.WriteString(seg)
	}
	b.WriteString(":" + action)
	sc, err := auth.ParseScope(b.String())
	if err != nil || sc.Class != "" || strings.Count(sc.Name, "/") != len(path) {
		return auth.Scope{}, false
	}
	return sc, true
}

// pluginTarget splits a plugin scope's name into the plugin and path it
// names, or reports false.
func pluginTarget(sc auth.Scope) (string, []string, bool) {
	if sc.Type != PluginScopeType || sc.Class != "" {
		return "", nil, false
	}
	segs := strings.Split(sc.Name, "/")
	for _, s := range segs {
		if !plugin.ValidSegment(s) {
			return "", nil, false
		}
	}
	return segs[0], segs[1:], true
}

// methodOf maps a plugin scope action to its HTTP method, or "".
func methodOf(action string) string {
	switch action {
	case "get":
		return http.MethodGet
	case "post":
		return http.MethodPost
	case "put":
		return http.MethodPut
	case "delete":
		return http.MethodDelete
	}
	return ""
}
