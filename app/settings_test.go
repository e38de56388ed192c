package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// oneVar is an environment with one variable set.
func oneVar(name, v string) func(string) string {
	return func(k string) string {
		if k == name {
			return v
		}
		return ""
	}
}

// readmeSettings reads the README's settings table: each variable's
// default as written there.
func readmeSettings(t *testing.T) map[string]string {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Settings\n")
	if !ok {
		t.Fatal("README.md has no Settings section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	names := regexp.MustCompile("`([A-Z_]+)`")
	out := make(map[string]string)
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, " | ")
		if !strings.HasPrefix(line, "| `") || len(cells) < 3 {
			continue
		}
		for _, m := range names.FindAllStringSubmatch(cells[0], -1) {
			if _, dup := out[m[1]]; dup {
				t.Errorf("README lists %s twice", m[1])
			}
			out[m[1]] = cells[1]
		}
	}
	return out
}

// TestReadmeSettings: the README's table names every variable the code
// reads, no other, each with the default the code has.
func TestReadmeSettings(t *testing.T) {
	readme := readmeSettings(t)
	defaults := newSettings()
	for _, st := range settingsTable {
		doc, ok := readme[st.name]
		if !ok {
			t.Errorf("%s is missing from the README's table", st.name)
			continue
		}
		delete(readme, st.name)
		switch code := st.show(defaults); {
		case code == "":
			if doc != "unset" && doc != "empty" && doc != "random" {
				t.Errorf("%s: README default %s, code has none", st.name, doc)
			}
		case doc != "`"+code+"`":
			t.Errorf("%s: README default %s, code `%s`", st.name, doc, code)
		}
	}
	for name := range readme {
		t.Errorf("README documents %s, which the code does not read", name)
	}
}

// TestDefaultsRoundTrip: each default, written back as the variable,
// reads as itself: what show prints is what a setting means.
func TestDefaultsRoundTrip(t *testing.T) {
	defaults := newSettings()
	for _, st := range settingsTable {
		v := st.show(defaults)
		if v == "" {
			continue
		}
		s := newSettings()
		if err := st.set(s, v); err != nil {
			t.Errorf("%s=%s: %v", st.name, v, err)
		} else if got := st.show(s); got != v {
			t.Errorf("%s=%s reads back as %s", st.name, v, got)
		}
	}
}

// TestBadSettingHidesSecrets: a refused value is named by its variable in
// one line, and a secret, or a password or query in a URL, never appears.
func TestBadSettingHidesSecrets(t *testing.T) {
	const pw = "hunter2-hunter2"
	for name, v := range map[string]string{
		"JWT_SECRET":       pw, // too short
		"JWKS_URL":         "ftp://u:" + pw + "@keys.example/jwks",
		"HOOK_CONNECT_URL": "ftp://u:" + pw + "@backend/connect",
		"HOOK_JOIN_URL":    "https://backend/join?key=" + pw + "\x7f",
		"NATS_URL":         "http://u:" + pw + "@nats:4222",
	} {
		_, err := loadSettings(oneVar(name, v))
		if err == nil {
			t.Errorf("%s=%q accepted", name, v)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, name) || strings.Contains(msg, "\n") || strings.Contains(msg, pw) {
			t.Errorf("%s: error %q: want one line naming it, without the secret", name, msg)
		}
	}
	for _, st := range settingsTable {
		switch st.name {
		case "JWT_SECRET", "API_KEY", "HOOK_SECRET", "NATS_TOKEN":
			if st.echo != nil {
				t.Errorf("%s: a refused value would be shown", st.name)
			}
		}
	}
}

// TestGroupPoliciesSetting: rules the history streams can keep are read in
// order; rules they cannot keep as first match wins stop the process with
// one line naming GROUP_POLICIES and both rules.
func TestGroupPoliciesSetting(t *testing.T) {
	env := func(v string) func(string) string { return oneVar("GROUP_POLICIES", v) }
	s, err := loadSettings(env(" room.vip = latest, room.*=at-most-once,chat.*=recoverable,chat.vip=recoverable"))
	if err != nil || showPolicies(s.Broker.Policies) != "room.vip=latest,room.*=at-most-once,chat.*=recoverable,chat.vip=recoverable" {
		t.Fatalf("%v %v", s.Broker.Policies, err)
	}
	for bad, want := range map[string]string{
		"private.*=at-most-once,*=recoverable": "*=recoverable overlaps the earlier private.*=at-most-once",
		"room.vip=latest,room.*=recoverable":   "room.*=recoverable overlaps the earlier room.vip=latest",
		"room*=recoverable":                    `pattern "room*"`,
		"room.*=kept":                          `"room.*=kept": want pattern=`,
	} {
		_, err := loadSettings(env(bad))
		if err == nil || !strings.HasPrefix(err.Error(), "GROUP_POLICIES=") || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line with %q", bad, err, want)
		}
	}
}
