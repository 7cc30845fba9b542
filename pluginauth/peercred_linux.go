package pluginauth

import "golang.org/x/sys/unix"

func getPeerCred(fd int) (PeerCred, error) {
	u, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return PeerCred{}, err
	}
	return PeerCred{PID: u.Pid, UID: u.Uid, GID: u.Gid}, nil
}
