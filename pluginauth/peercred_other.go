//go:build !linux

package pluginauth

func getPeerCred(int) (PeerCred, error) { return PeerCred{}, errNoPeerCred }
