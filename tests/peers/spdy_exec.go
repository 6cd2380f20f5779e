// spdy_exec: a CRI streaming client built on Go's spdystream (the SPDY
// implementation kubelet, kubectl and crictl use), for Berth's tests: it
// upgrades an exec URL, opens the remotecommand streams the way client-go
// does, writes its own stdin to the stdin stream, and prints what came back.
// With PROTOCOL portforward.k8s.io and a PORT, it opens one port-forward
// stream pair instead, as client-go's port-forwarder does.
//
// usage: spdy_exec URL PROTOCOL [tty | PORT]
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/docker/spdystream"
)

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: spdy_exec URL PROTOCOL [tty]")
	}
	u, err := url.Parse(os.Args[1])
	if err != nil {
		fail("url: %v", err)
	}
	tty := len(os.Args) > 3 && os.Args[3] == "tty"
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		fail("dial: %v", err)
	}
	req, _ := http.NewRequest("GET", os.Args[1], nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	req.Header.Add("X-Stream-Protocol-Version", os.Args[2])
	if err := req.Write(conn); err != nil {
		fail("request: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		fail("upgrade refused: %v %v", err, resp)
	}
	sc, err := spdystream.NewConnection(conn, false)
	if err != nil {
		fail("spdy: %v", err)
	}
	go sc.Serve(spdystream.NoOpStreamHandler)
	if os.Args[2] == "portforward.k8s.io" {
		portForward(sc, os.Args[3])
		return
	}
	open := func(kind string) *spdystream.Stream {
		return openStream(sc, http.Header{"Streamtype": []string{kind}})
	}
	errStream := open("error")
	stdin := open("stdin")
	stdout := open("stdout")
	var stderr, resize *spdystream.Stream
	if tty {
		resize = open("resize")
		resize.Write([]byte(`{"Width":90,"Height":33}`))
	} else {
		stderr = open("stderr")
	}
	var wg sync.WaitGroup
	var out, errOut, status []byte
	wg.Add(1)
	go func() { defer wg.Done(); out, _ = io.ReadAll(stdout) }()
	if stderr != nil {
		wg.Add(1)
		go func() { defer wg.Done(); errOut, _ = io.ReadAll(stderr) }()
	}
	in, _ := io.ReadAll(os.Stdin)
	stdin.Write(in)
	stdin.Close()
	status, _ = io.ReadAll(errStream)
	wg.Wait()
	fmt.Printf("stdout=%q\nstderr=%q\nstatus=%s\n", out, errOut, status)
}

func portForward(sc *spdystream.Connection, port string) {
	open := func(kind string) *spdystream.Stream {
		return openStream(sc, http.Header{"Streamtype": []string{kind}, "Port": []string{port}, "Requestid": []string{"0"}})
	}
	errStream := open("error")
	errStream.Close()
	data := open("data")
	in, _ := io.ReadAll(os.Stdin)
	data.Write(in)
	var errOut []byte
	done := make(chan struct{})
	go func() { errOut, _ = io.ReadAll(errStream); close(done) }()
	buf := make([]byte, 4096)
	n, _ := data.Read(buf)
	<-done
	fmt.Printf("data=%q\nerror=%q\n", buf[:n], errOut)
}

// openStream creates a stream and waits for the server to accept it, as
// client-go does.
func openStream(sc *spdystream.Connection, h http.Header) *spdystream.Stream {
	s, err := sc.CreateStream(h, nil, false)
	if err != nil {
		fail("stream %v: %v", h, err)
	}
	if err := s.WaitTimeout(10 * time.Second); err != nil {
		fail("stream %v not accepted: %v", h, err)
	}
	return s
}
