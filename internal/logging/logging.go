// Package logging builds the service's zap logger from its configuration.
package logging

import (
	"fmt"
	"io"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Config selects the level and encoding of the logs.
type Config struct {
	// Level is the minimum level written: debug, info, warn or error (any case).
	Level string `env:"LOG_LEVEL, default=info"`
	// Format is json (for log collectors) or console (for people).
	Format string `env:"LOG_FORMAT, default=json"`
}

var levels = map[string]zapcore.Level{
	"debug": zapcore.DebugLevel,
	"info":  zapcore.InfoLevel,
	"warn":  zapcore.WarnLevel,
	"error": zapcore.ErrorLevel,
}

// Validate reports the first setting that cannot be used, naming its variable.
func (c Config) Validate() error {
	if _, ok := levels[strings.ToLower(c.Level)]; !ok {
		return fmt.Errorf("LOG_LEVEL=%q: must be one of debug, info, warn, error", c.Level)
	}
	if f := strings.ToLower(c.Format); f != "json" && f != "console" {
		return fmt.Errorf("LOG_FORMAT=%q: must be json or console", c.Format)
	}
	return nil
}

// MarshalLogObject lets the startup line show the effective settings.
func (c Config) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("level", c.Level)
	enc.AddString("format", c.Format)
	return nil
}

// New returns a logger that writes to w. JSON lines carry timestamp (ISO8601),
// level, message and caller; errors carry a stack trace.
func New(c Config, w io.Writer) (*zap.Logger, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	encCfg := zapcore.EncoderConfig{
		TimeKey:        "timestamp",
		LevelKey:       "level",
		NameKey:        "logger",
		CallerKey:      "caller",
		MessageKey:     "message",
		StacktraceKey:  "stacktrace",
		LineEnding:     zapcore.DefaultLineEnding,
		EncodeLevel:    zapcore.LowercaseLevelEncoder,
		EncodeTime:     zapcore.ISO8601TimeEncoder,
		EncodeDuration: zapcore.StringDurationEncoder,
		EncodeCaller:   zapcore.ShortCallerEncoder,
	}
	var enc zapcore.Encoder
	if strings.EqualFold(c.Format, "console") {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), levels[strings.ToLower(c.Level)])
	return zap.New(core, zap.AddCaller(), zap.AddStacktrace(zapcore.ErrorLevel)), nil
}
