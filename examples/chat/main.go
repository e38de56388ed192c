package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/web"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := serve(ctx, ":"+port(), log); err != nil {
		log.Error("chat", "error", err)
		os.Exit(1)
	}
}

func port() string {
	if p := os.Getenv("PORT"); p != "" {
		return p
	}
	return "8080"
}

// serve runs the chat until ctx ends.
func serve(ctx context.Context, addr string, log *slog.Logger) error {
	b, err := broker.New(broker.Config{Logger: log})
	if err != nil {
		return err
	}
	w, err := web.New(b, web.Config{
		ClientSend: true,
		Consumer:   &Chat{BadWords: []string{"darn", "heck"}},
		Logger:     log,
	})
	if err != nil {
		b.Close(context.Background())
		return err
	}
	srv := &http.Server{Addr: addr, Handler: w.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.ListenAndServe() }()
	log.Info("chat listening", "addr", addr)
	select {
	case <-ctx.Done():
	case err = <-served:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	go srv.Shutdown(sctx)
	w.Shutdown(sctx)
	b.Close(sctx)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
