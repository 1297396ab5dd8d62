// Command ferretdb-embedded serves FerretDB on one loopback address, over
// PostgreSQL (--postgresql-url, what the tests, the demo and the benches use)
// or SQLite (--dir). It exists because `go install` of FerretDB's own command
// does not build from the module proxy; the library package does.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "TCP address to serve the MongoDB wire protocol on")
	dir := flag.String("dir", "ferretdb-data", "directory for the SQLite databases")
	pg := flag.String("postgresql-url", "", "PostgreSQL URL: use the PostgreSQL backend instead of SQLite")
	flag.Parse()

	handler, sqliteURL := "postgresql", ""
	if *pg == "" {
		handler, sqliteURL = "sqlite", "file:"+*dir+"/"
		if err := os.MkdirAll(*dir, 0o700); err != nil {
			fmt.Fprintf(os.Stderr, "ferretdb: cannot create %s: %v\n", *dir, err)
			os.Exit(1)
		}
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:      ferretdb.ListenerConfig{TCP: *listen},
		Logger:        logger,
		Handler:       handler,
		SQLiteURL:     sqliteURL,
		PostgreSQLURL: *pg,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb: %v\n", err)
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(os.Stderr, "ferretdb: serving %s on %s\n", *dir, f.MongoDBURI())
	if err := f.Run(ctx); err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "ferretdb: %v\n", err)
		os.Exit(1)
	}
}
