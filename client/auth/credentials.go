package auth

import (
	"context"
	"fmt"

	orasauth "oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
)

// Credential is what the transport presents to a token endpoint.
type Credential struct {
	// Username and Password are sent as Basic credentials on a GET token
	// request, or as an OAuth2 password grant.
	Username, Password string
	// RefreshToken, when set, is sent as an OAuth2 refresh_token grant (the
	// "identitytoken" of Docker's config.json).
	RefreshToken string
}

// CredentialFunc returns the credential for a registry host ("host:port" as
// in the request URL). An empty Credential means anonymous.
type CredentialFunc func(ctx context.Context, host string) (Credential, error)

// StaticCredential returns a CredentialFunc that gives cred for host and the
// empty credential for every other host.
func StaticCredential(host string, cred Credential) CredentialFunc {
	return func(_ context.Context, h string) (Credential, error) {
		if h == host {
			return cred, nil
		}
		return Credential{}, nil
	}
}

// FromStore adapts an oras-go credential store (Docker's config.json, its
// credential helpers and native stores) into a CredentialFunc. Docker Hub's
// host aliases are mapped as oras-go maps them.
func FromStore(store credentials.Store) CredentialFunc {
	get := credentials.Credential(store)
	return func(ctx context.Context, host string) (Credential, error) {
		c, err := get(ctx, host)
		if err != nil {
			return Credential{}, fmt.Errorf("credentials for %s: %w", host, err)
		}
		return fromOras(c), nil
	}
}

// FromDockerConfig opens the Docker config.json at path (with its
// credsStore and credHelpers) through oras-go's credentials package. The
// caller chooses the path; this package reads no environment.
func FromDockerConfig(path string) (CredentialFunc, error) {
	store, err := credentials.NewStore(path, credentials.StoreOptions{})
	if err != nil {
		return nil, fmt.Errorf("open docker config %s: %w", path, err)
	}
	return FromStore(store), nil
}

func fromOras(c orasauth.Credential) Credential {
	return Credential{Username: c.Username, Password: c.Password, RefreshToken: c.RefreshToken}
}
