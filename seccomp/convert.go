package seccomp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"

	"github.com/containerd/nri/pkg/api"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// FromOCI converts a runtime-spec profile and validates it. A nil profile
// converts to nil, "unconfined".
func FromOCI(o *specs.LinuxSeccomp) (*Profile, error) {
	if o == nil {
		return nil, nil
	}
	var ret *uint64
	if o.DefaultErrnoRet != nil {
		v := uint64(*o.DefaultErrnoRet)
		ret = &v
	}
	def, err := parseAction(string(o.DefaultAction), ret)
	if err != nil {
		return nil, fmt.Errorf("default action: %w", err)
	}
	p := &Profile{
		DefaultAction:    def,
		ListenerPath:     o.ListenerPath,
		ListenerMetadata: o.ListenerMetadata,
		Syscalls:         make([]Rule, 0, len(o.Syscalls)),
	}
	for _, a := range o.Architectures {
		p.Architectures = append(p.Architectures, string(a))
	}
	for _, f := range o.Flags {
		p.Flags = append(p.Flags, string(f))
	}
	for i, s := range o.Syscalls {
		var ret *uint64
		if s.ErrnoRet != nil {
			v := uint64(*s.ErrnoRet)
			ret = &v
		}
		r, err := parseRule(s.Names, string(s.Action), ret, len(s.Args), func(j int) (uint64, string, uint64, uint64) {
			a := s.Args[j]
			return uint64(a.Index), string(a.Op), a.Value, a.ValueTwo
		})
		if err != nil {
			return nil, fmt.Errorf("syscall rule %d: %w", i, err)
		}
		p.Syscalls = append(p.Syscalls, r)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// parseRule builds a rule from the fields that the runtime-spec and NRI
// representations share; arg returns index, operator, value and value two of
// argument condition j.
func parseRule(names []string, action string, ret *uint64, nargs int, arg func(j int) (uint64, string, uint64, uint64)) (Rule, error) {
	act, err := parseAction(action, ret)
	if err != nil {
		return Rule{}, err
	}
	r := Rule{Names: slices.Clone(names), Action: act}
	if nargs > 0 {
		r.Args = make([]Cond, 0, nargs)
	}
	for j := range nargs {
		idx, opName, v, v2 := arg(j)
		if idx >= MaxArgs {
			return Rule{}, fmt.Errorf("argument index %d out of range 0..5", idx)
		}
		op, err := ParseOp(opName)
		if err != nil {
			return Rule{}, err
		}
		r.Args = append(r.Args, Cond{Index: uint8(idx), Op: op, Value: v, ValueTwo: v2})
	}
	return r, nil
}

// OCI converts p to its runtime-spec form. A nil profile converts to nil.
func (p *Profile) OCI() *specs.LinuxSeccomp {
	if p == nil {
		return nil
	}
	o := &specs.LinuxSeccomp{
		DefaultAction:    specs.LinuxSeccompAction(p.DefaultAction.Kind.OCI()),
		ListenerPath:     p.ListenerPath,
		ListenerMetadata: p.ListenerMetadata,
	}
	if p.DefaultAction.RetSet {
		v := uint(p.DefaultAction.Ret)
		o.DefaultErrnoRet = &v
	}
	for _, a := range p.Architectures {
		o.Architectures = append(o.Architectures, specs.Arch(a))
	}
	for _, f := range p.Flags {
		o.Flags = append(o.Flags, specs.LinuxSeccompFlag(f))
	}
	for _, r := range p.Syscalls {
		s := specs.LinuxSyscall{
			Names:  slices.Clone(r.Names),
			Action: specs.LinuxSeccompAction(r.Action.Kind.OCI()),
		}
		if r.Action.RetSet {
			v := uint(r.Action.Ret)
			s.ErrnoRet = &v
		}
		for _, c := range r.Args {
			s.Args = append(s.Args, specs.LinuxSeccompArg{
				Index:    uint(c.Index),
				Value:    c.Value,
				ValueTwo: c.ValueTwo,
				Op:       specs.LinuxSeccompOperator(c.Op.OCI()),
			})
		}
		o.Syscalls = append(o.Syscalls, s)
	}
	return o
}

// FromNRI converts an NRI seccomp policy, as a plugin's adjustment carries
// it, and validates it. A nil policy converts to nil, "unconfined".
func FromNRI(n *api.LinuxSeccomp) (*Profile, error) {
	if n == nil {
		return nil, nil
	}
	var ret *uint64
	if n.DefaultErrno != nil {
		v := uint64(n.DefaultErrno.Value)
		ret = &v
	}
	def, err := parseAction(n.DefaultAction, ret)
	if err != nil {
		return nil, fmt.Errorf("default action: %w", err)
	}
	p := &Profile{
		DefaultAction:    def,
		Architectures:    cloneOrNil(n.Architectures),
		Flags:            cloneOrNil(n.Flags),
		ListenerPath:     n.ListenerPath,
		ListenerMetadata: n.ListenerMetadata,
		Syscalls:         make([]Rule, 0, len(n.Syscalls)),
	}
	for i, s := range n.Syscalls {
		if s == nil {
			return nil, fmt.Errorf("syscall rule %d: missing", i)
		}
		var ret *uint64
		if s.ErrnoRet != nil {
			v := uint64(s.ErrnoRet.Value)
			ret = &v
		}
		for j, a := range s.Args {
			if a == nil {
				return nil, fmt.Errorf("syscall rule %d: argument %d: missing", i, j)
			}
		}
		r, err := parseRule(s.Names, s.Action, ret, len(s.Args), func(j int) (uint64, string, uint64, uint64) {
			a := s.Args[j]
			return uint64(a.Index), a.Op, a.Value, a.ValueTwo
		})
		if err != nil {
			return nil, fmt.Errorf("syscall rule %d: %w", i, err)
		}
		p.Syscalls = append(p.Syscalls, r)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// cloneOrNil copies s, giving nil for an empty slice, so that both
// conversions produce equal profiles.
func cloneOrNil(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return slices.Clone(s)
}

// NRI converts p to the form NRI adjustments carry. A nil profile converts
// to nil.
func (p *Profile) NRI() *api.LinuxSeccomp {
	if p == nil {
		return nil
	}
	n := &api.LinuxSeccomp{
		DefaultAction:    p.DefaultAction.Kind.OCI(),
		Architectures:    slices.Clone(p.Architectures),
		Flags:            slices.Clone(p.Flags),
		ListenerPath:     p.ListenerPath,
		ListenerMetadata: p.ListenerMetadata,
	}
	if p.DefaultAction.RetSet {
		n.DefaultErrno = &api.OptionalUInt32{Value: uint32(p.DefaultAction.Ret)}
	}
	for _, r := range p.Syscalls {
		s := &api.LinuxSyscall{Names: slices.Clone(r.Names), Action: r.Action.Kind.OCI()}
		if r.Action.RetSet {
			s.ErrnoRet = &api.OptionalUInt32{Value: uint32(r.Action.Ret)}
		}
		for _, c := range r.Args {
			s.Args = append(s.Args, &api.LinuxSeccompArg{
				Index:    uint32(c.Index),
				Value:    c.Value,
				ValueTwo: c.ValueTwo,
				Op:       c.Op.OCI(),
			})
		}
		n.Syscalls = append(n.Syscalls, s)
	}
	return n
}

// ParseJSON parses and validates a profile in runtime-spec JSON form (the
// "seccomp" object of an OCI config, or a Localhost profile file in that
// form). Unknown fields are an error; JSON null means "unconfined".
func ParseJSON(b []byte) (*Profile, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var o *specs.LinuxSeccomp
	if err := dec.Decode(&o); err != nil {
		return nil, fmt.Errorf("decode seccomp profile: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("decode seccomp profile: trailing data after the profile")
	}
	p, err := FromOCI(o)
	if err != nil {
		return nil, fmt.Errorf("seccomp profile: %w", err)
	}
	return p, nil
}
