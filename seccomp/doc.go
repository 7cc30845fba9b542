// Package seccomp models OCI seccomp profiles and decides whether an adjusted
// profile only confines a container further than the profile it replaces.
//
// The NRI gateway uses it when a plugin's adjustment sets a container's
// seccomp policy:
//
//   - Profile is a faithful model of runtime-spec's LinuxSeccomp, converted
//     from and to specs.LinuxSeccomp (FromOCI, Profile.OCI), NRI's
//     api.LinuxSeccomp (FromNRI, Profile.NRI) and runtime-spec JSON
//     (ParseJSON). A nil *Profile is "unconfined".
//   - Compare(original, adjusted) reports every way in which adjusted may be
//     more permissive than original, for every architecture, syscall and
//     argument value, as human-readable Findings ("`ptrace` on amd64:
//     ERRNO -> ALLOW"). It is sound: where it cannot prove that nothing
//     loosens, it says so (Unprovable), and it never calls a loosening
//     tighter. Architecture, flag and listener changes are findings too.
//   - Policy applies the rule set the NRI maintainers asked for (Mode: none,
//     runtime-default-only, tighten-only, any), per profile kind (KindOf
//     classifies NRI's SecurityProfile), with explicit allowances for
//     listener paths, flags, architecture and errno changes.
//     PolicyFromNRIRejects expresses NRI's default validator knobs.
//
// Actions are ordered by the kernel's precedence, KILL_PROCESS > KILL_THREAD >
// TRAP > ERRNO > USER_NOTIF > TRACE > LOG > ALLOW. Two ERRNO actions with
// different errno values are equally restrictive (the syscall does not run
// either way); such a change is reported as ErrnoChanged, which a policy
// may allow, never as a loosening.
//
// Known limits, all on the safe side: a syscall name that does not exist on
// an architecture is still compared (libseccomp would ignore its rules);
// runc's -ENOSYS stub for syscalls newer than every named one is covered
// without per-architecture syscall tables, so dropping names from a profile
// whose default is stricter than ERRNO is Unprovable; rules of syscalls that
// socketcall(2) or ipc(2) multiplex on 32-bit architectures are checked with
// an extra, stricter pass.
package seccomp
