// grpc_version: a CRI client built on Debian's gRPC-Go (the library kubelet
// and crictl use), for Berth's tests. It dials the CRI socket the way kubelet
// 1.28 did: the bare socket path as the target, a unix dialer, so gRPC-Go
// sends that path as the HTTP/2 :authority. AUTHORITY, when given, is sent
// instead ("-" sends the bare path, "" leaves gRPC-Go's default). It calls
// RuntimeService/Version twice on one connection (the second request's
// headers come from HPACK's dynamic table) and prints the runtime name.
//
// usage: grpc_version SOCKET [AUTHORITY]
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
)

// rawCodec sends and receives protobuf bytes as they are, so the peer needs
// no generated CRI code: the request is a VersionRequest with version "v1".
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error)      { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error { *(v.(*[]byte)) = data; return nil }
func (rawCodec) Name() string                               { return "proto" }

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: grpc_version SOCKET [AUTHORITY]")
	}
	socket := os.Args[1]
	opts := []grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})),
	}
	if len(os.Args) > 2 {
		switch a := os.Args[2]; a {
		case "-":
			opts = append(opts, grpc.WithAuthority(socket))
		default:
			opts = append(opts, grpc.WithAuthority(a))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, socket, opts...)
	if err != nil {
		fail("dial: %v", err)
	}
	defer conn.Close()
	for i := 0; i < 2; i++ {
		req := []byte{0x0a, 0x02, 'v', '1'}
		var resp []byte
		if err := conn.Invoke(ctx, "/runtime.v1.RuntimeService/Version", &req, &resp); err != nil {
			fail("Version: %v", err)
		}
		// Field 2 of VersionResponse is runtime_name.
		name := ""
		for j := 0; j+1 < len(resp); {
			tag, n := resp[j], int(resp[j+1])
			if j+2+n > len(resp) {
				break
			}
			if tag == 0x12 {
				name = string(resp[j+2 : j+2+n])
			}
			j += 2 + n
		}
		fmt.Printf("runtime_name=%s\n", strings.TrimSpace(name))
	}
}
