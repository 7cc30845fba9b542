package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/net/multiplex"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/trustgate/trustgate/e2e/internal/pluginspec"
)

// ttrpc's frame header: length, stream ID (big endian), type, flags.
const (
	headerLen        = 10
	frameTypeRequest = 1
	frameTypeAnswer  = 2
)

// runRaw is a plugin that registers through NRI's multiplexer with a real
// ttrpc client, but serves the runtime's calls by hand, so that it can
// answer CreateContainer with Status{code: OK, message: "ok"} and a
// payload: ttrpc fails a call only when the code is not OK, so the payload
// counts.
func runRaw(ctx context.Context, conn net.Conn, name, idx string, spec *pluginspec.Spec) error {
	mux := multiplex.Multiplex(conn)
	defer mux.Close()
	l, err := mux.Listen(multiplex.PluginServiceConn)
	if err != nil {
		return err
	}
	rc, err := mux.Open(multiplex.RuntimeServiceConn)
	if err != nil {
		return err
	}
	client := ttrpc.NewClient(rc)
	defer client.Close()
	served := make(chan error, 1)
	go func() { served <- serveRaw(l, spec) }()
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := api.NewRuntimeClient(client).RegisterPlugin(rctx, &api.RegisterPluginRequest{PluginName: name, PluginIdx: idx}); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
		return nil
	}
}

func serveRaw(l net.Listener, spec *pluginspec.Spec) error {
	c, err := l.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	// The mux hands out one of its frames per Read, and fails a Read whose
	// buffer is smaller than the frame: read through a buffer as large as
	// the largest ttrpc message.
	r := bufio.NewReaderSize(c, headerLen+4<<20)
	hdr := make([]byte, headerLen)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return err
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[0:4]))
		if _, err := io.ReadFull(r, body); err != nil {
			return err
		}
		if hdr[8] != frameTypeRequest {
			continue
		}
		var req ttrpc.Request
		if err := proto.Unmarshal(body, &req); err != nil {
			return err
		}
		payload, st, err := answer(&req, spec)
		if err != nil {
			return err
		}
		b, err := proto.Marshal(payload)
		if err != nil {
			return err
		}
		rsp, err := proto.Marshal(&ttrpc.Response{Status: st.Proto(), Payload: b})
		if err != nil {
			return err
		}
		out := make([]byte, headerLen, headerLen+len(rsp))
		binary.BigEndian.PutUint32(out[0:4], uint32(len(rsp)))
		copy(out[4:8], hdr[4:8])
		out[8] = frameTypeAnswer
		if _, err := c.Write(append(out, rsp...)); err != nil {
			return err
		}
	}
}

// answer returns the payload and status for one call from the runtime.
func answer(req *ttrpc.Request, spec *pluginspec.Spec) (proto.Message, *status.Status, error) {
	switch req.Method {
	case "Configure":
		return &api.ConfigureResponse{Events: int32(api.MustParseEventMask("CreateContainer"))}, nil, nil
	case "Synchronize":
		emit(pluginspec.Event{Event: "synchronized"})
		return &api.SynchronizeResponse{}, nil, nil
	case "CreateContainer":
		var cr api.CreateContainerRequest
		if err := proto.Unmarshal(req.Payload, &cr); err != nil {
			return nil, nil, err
		}
		if spec.Pod != "" && cr.GetPod().GetName() != spec.Pod {
			return &api.CreateContainerResponse{}, nil, nil
		}
		emit(pluginspec.Event{Event: "create", Container: cr.GetContainer().GetId(), Pod: cr.GetPod().GetName()})
		u := &api.ContainerUpdate{ContainerId: spec.OKStatusUpdate.Container}
		u.SetLinuxMemoryLimit(spec.OKStatusUpdate.MemoryLimit)
		return &api.CreateContainerResponse{Update: []*api.ContainerUpdate{u}}, status.New(codes.OK, "ok"), nil
	default:
		return &api.Empty{}, nil, nil
	}
}
