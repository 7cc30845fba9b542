// Package seccomp models OCI seccomp profiles and decides whether an adjusted
// profile only confines a container further than the profile it replaces.
package seccomp
