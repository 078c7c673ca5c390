package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"nibble.dev/nibble/internal/cache"
	"nibble.dev/nibble/internal/server"
)

// newServeCommand is the serving process that nibble mount starts.
func newServeCommand() *cobra.Command {
	var (
		f       readFlags
		address string
	)
	cmd := &cobra.Command{
		Use:    "serve",
		Short:  "Serve mounted images (started by nibble mount)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			root, err := filepath.Abs(f.root)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(root, 0o700); err != nil {
				return err
			}
			logPath := filepath.Join(root, logName)
			logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
			if err != nil {
				return err
			}
			defer logf.Close()
			log := slog.New(slog.NewJSONHandler(logf, nil))
			ln, err := server.Listen(address)
			if errors.Is(err, server.ErrRunning) {
				log.Info("another server holds the address", "address", address)
				return nil
			}
			if err != nil {
				return err
			}
			defer ln.Close()
			var copts []cache.Option
			if f.cacheSize > 0 {
				copts = append(copts, cache.WithMaxSize(f.cacheSize))
			}
			s, err := server.New(root, server.WithLogger(log, logPath), server.WithCacheOptions(copts...))
			if err != nil {
				return err
			}
			err = s.Serve(cmd.Context(), ln)
			if cerr := s.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				log.Error("exiting", "err", err)
				return fmt.Errorf("serve: %w", err)
			}
			log.Info("exited")
			return nil
		},
	}
	f.register(cmd)
	registerAddress(cmd, &address)
	return cmd
}
