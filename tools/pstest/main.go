// Command pstest serves Google's in-memory Pub/Sub fake (cloud.google.com/go/pubsub/pstest)
// on 127.0.0.1 for local runs and tests of postauth's streaming path.
//
// It prints one line, "PUBSUB_EMULATOR_HOST=127.0.0.1:<port>", once the gRPC server is
// listening, then serves until SIGTERM or SIGINT. Topics and subscriptions live in memory
// only: a restart starts empty. Built offline against Debian's golang-google-cloud-dev
// (see pipeline/local_pubsub.py).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"cloud.google.com/go/pubsub/pstest"
)

func main() {
	srv := pstest.NewServer()
	fmt.Printf("PUBSUB_EMULATOR_HOST=%s\n", srv.Addr)
	os.Stdout.Sync()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	srv.Close()
}
