package seccomp

import (
	"fmt"
	"strconv"
)

// ActionKind is a seccomp filter action without its return code. Kinds are
// ordered by the kernel's precedence, from least to most restrictive:
// ALLOW < LOG < TRACE < USER_NOTIF < ERRNO < TRAP < KILL_THREAD < KILL_PROCESS.
// KILL and KILL_THREAD are distinct kinds (so that a profile converts back as
// it was written) with the same rank.
type ActionKind uint8

// The action kinds, in order of precedence.
const (
	ActAllow ActionKind = iota + 1
	ActLog
	ActTrace
	ActNotify
	ActErrno
	ActTrap
	ActKill
	ActKillThread
	ActKillProcess
)

// EPERM is the errno that runc uses for ERRNO and TRACE actions whose profile
// sets no return code.
const EPERM = 1

// ENOSYS is the errno that runc's -ENOSYS stub returns for syscalls newer than
// every syscall that a profile names.
const ENOSYS = 38

var actionOCI = [...]string{
	ActAllow:       "SCMP_ACT_ALLOW",
	ActLog:         "SCMP_ACT_LOG",
	ActTrace:       "SCMP_ACT_TRACE",
	ActNotify:      "SCMP_ACT_NOTIFY",
	ActErrno:       "SCMP_ACT_ERRNO",
	ActTrap:        "SCMP_ACT_TRAP",
	ActKill:        "SCMP_ACT_KILL",
	ActKillThread:  "SCMP_ACT_KILL_THREAD",
	ActKillProcess: "SCMP_ACT_KILL_PROCESS",
}

// OCI returns the runtime-spec spelling of the kind, e.g. "SCMP_ACT_ERRNO".
func (k ActionKind) OCI() string {
	if k >= ActAllow && int(k) < len(actionOCI) {
		return actionOCI[k]
	}
	return "SCMP_ACT_INVALID(" + strconv.Itoa(int(k)) + ")"
}

// String returns the kernel's name for the kind, e.g. "ERRNO" or "USER_NOTIF".
func (k ActionKind) String() string {
	switch k {
	case ActAllow:
		return "ALLOW"
	case ActLog:
		return "LOG"
	case ActTrace:
		return "TRACE"
	case ActNotify:
		return "USER_NOTIF"
	case ActErrno:
		return "ERRNO"
	case ActTrap:
		return "TRAP"
	case ActKill, ActKillThread:
		return "KILL_THREAD"
	case ActKillProcess:
		return "KILL_PROCESS"
	}
	return "INVALID(" + strconv.Itoa(int(k)) + ")"
}

// Rank orders kinds by the kernel's precedence; a higher rank is more
// restrictive. KILL and KILL_THREAD share a rank.
func (k ActionKind) Rank() int {
	if k >= ActKillThread {
		return int(k) - 1
	}
	return int(k)
}

// ParseActionKind parses a runtime-spec action name such as "SCMP_ACT_ALLOW".
func ParseActionKind(s string) (ActionKind, error) {
	for k, name := range actionOCI {
		if name != "" && name == s {
			return ActionKind(k), nil
		}
	}
	return 0, fmt.Errorf("unknown seccomp action %q", s)
}

// Action is a seccomp action with its optional return code, as a profile
// writes it. Ret is meaningful for ERRNO and TRACE only; when RetSet is false
// runc uses EPERM.
type Action struct {
	Kind   ActionKind
	Ret    uint16
	RetSet bool
}

// EffectiveRet returns the return code the filter uses: Ret if the profile
// sets one, otherwise EPERM, and 0 for kinds that carry none.
func (a Action) EffectiveRet() uint16 {
	if a.Kind != ActErrno && a.Kind != ActTrace {
		return 0
	}
	if a.RetSet {
		return a.Ret
	}
	return EPERM
}

// Same reports whether two actions compile to the same filter action, the
// test runc uses to drop rules that repeat the default action.
func (a Action) Same(b Action) bool {
	return a.Kind.Rank() == b.Kind.Rank() && a.EffectiveRet() == b.EffectiveRet()
}

// String returns the kind, with the return code for ERRNO and TRACE, e.g.
// "ERRNO(1)".
func (a Action) String() string {
	if a.Kind == ActErrno || a.Kind == ActTrace {
		return a.Kind.String() + "(" + strconv.Itoa(int(a.EffectiveRet())) + ")"
	}
	return a.Kind.String()
}

func parseAction(name string, ret *uint64) (Action, error) {
	k, err := ParseActionKind(name)
	if err != nil {
		return Action{}, err
	}
	a := Action{Kind: k}
	if ret != nil {
		if *ret > 0xffff {
			return Action{}, fmt.Errorf("errno %d of %s does not fit the 16-bit return code", *ret, name)
		}
		a.Ret, a.RetSet = uint16(*ret), true
	}
	return a, nil
}
