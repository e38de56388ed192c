// Package djangochat_test drives examples/django-chat in real Chromium:
// Django (gunicorn) for pages and hooks, the real groupcast binary for the
// sockets.
package djangochat_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/groupcast/groupcast/internal/apptest"
)

const python = "/usr/bin/python3"

// TestBrowserChat logs in through Django's login page, opens a room, posts
// a message through a Django view (saved, then published by the post_save
// signal's group_send) and sees it on the page; a room the ported consumer
// refuses shows its code; the consumer's receive answers the page's own
// "history" frame; a closed tab reaches the consumer's disconnect.
func TestBrowserChat(t *testing.T) {
	if testing.Short() {
		t.Skip("runs gunicorn, the binary and chromium")
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium is not installed; .ci/run installs it")
		}
		t.Skip("needs chromium (apt-get install chromium)")
	}
	gunicorn, err := exec.LookPath("gunicorn")
	if err != nil {
		t.Skip("needs Debian's gunicorn, python3-django and python3-django-channels")
	}
	if out, err := exec.Command(python, "-c", "import django, channels, jwt").CombinedOutput(); err != nil {
		t.Skipf("needs Debian's python3-django python3-django-channels python3-jwt: %v %s", err, out)
	}

	dport := freePort(t)
	django := fmt.Sprintf("http://127.0.0.1:%d", dport)
	env := []string{"HOOK_SECRET=e2e-secret", fmt.Sprintf("ALLOWED_ORIGINS=http://127.0.0.1:%d", dport)}
	for _, e := range []string{"connect", "join", "receive", "disconnect"} {
		env = append(env, fmt.Sprintf("HOOK_%s_URL=%s/groupcast/%s", strings.ToUpper(e), django, e))
	}
	gc := apptest.Start(t, nil, env...)

	denv := append(os.Environ(), "DATABASE_PATH="+filepath.Join(t.TempDir(), "db.sqlite3"), "HOOK_SECRET=e2e-secret",
		"DJANGO_DEBUG=false", "GROUPCAST_URL="+gc.Base, "GROUPCAST_PUBLIC_URL="+gc.Base)
	manage := func(args ...string) {
		cmd := exec.Command(python, append([]string{"manage.py"}, args...)...)
		cmd.Env = denv
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("manage.py %v: %v\n%s", args, err, out)
		}
	}
	manage("migrate", "-v0")
	manage("shell", "-c", "from django.contrib.auth.models import User; User.objects.create_user('ada', password='pw')")
	g := exec.Command(gunicorn, "-b", fmt.Sprintf("127.0.0.1:%d", dport), "-w", "2", "--log-level", "warning", "chatsite.wsgi")
	var djangoLog apptest.Buffer // ChatConsumer.disconnect logs there
	g.Env, g.Stderr = denv, &djangoLog
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Process.Kill(); g.Wait() })
	waitHTTP(t, django+"/accounts/login/")

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(browser, 60*time.Second)
	defer cancel()

	state := `document.getElementById("state").textContent`
	run(t, ctx, "log in",
		chromedp.Navigate(django+"/accounts/login/"),
		chromedp.SendKeys(chromedp.CSS("#id_username"), "ada"),
		chromedp.SendKeys(chromedp.CSS("#id_password"), "pw"),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#room-name")),
	)
	run(t, ctx, "open a room and post through the view",
		chromedp.Navigate(django+"/chat/lobby/"),
		chromedp.WaitVisible(chromedp.CSS("#log")),
		chromedp.Poll[chromedp.Void](state+` === "connected"`, chromedp.WithPollingTimeout(15*time.Second)),
		chromedp.SendKeys(chromedp.CSS("#text"), "hello from chromium\r"), // Enter: the page's submit handler
		chromedp.Poll[chromedp.Void](`[...document.querySelectorAll("#log li.message")].some(li => li.textContent === "ada: hello from chromium")`,
			chromedp.WithPollingTimeout(10*time.Second)),
	)
	run(t, ctx, "the consumer's receive answers the history frame",
		chromedp.Reload(),
		chromedp.Poll[chromedp.Void](`[...document.querySelectorAll("#log li.history")].some(li => li.textContent === "ada: hello from chromium")`,
			chromedp.WithPollingTimeout(15*time.Second)),
	)
	run(t, ctx, "a room the consumer refuses",
		chromedp.Navigate(django+"/chat/closed/"),
		chromedp.Poll[chromedp.Void](state+` === "refused: room_closed"`, chromedp.WithPollingTimeout(15*time.Second)),
	)

	// A closed tab reaches ChatConsumer.disconnect, with its groups.
	tab, closeTab := chromedp.NewContext(browser)
	tabCtx, cancelTab := context.WithTimeout(tab, 30*time.Second)
	defer cancelTab()
	run(t, tabCtx, "open a second tab",
		chromedp.Navigate(django+"/chat/tabroom/"),
		chromedp.WaitVisible(chromedp.CSS("#log")),
		chromedp.Poll[chromedp.Void](state+` === "connected"`, chromedp.WithPollingTimeout(15*time.Second)),
	)
	closeTab()
	want := "ada left ['room.tabroom']"
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(djangoLog.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("Django's disconnect never logged %q; its log:\n%s", want, djangoLog.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func run(t *testing.T, ctx context.Context, step string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, actions...); err != nil {
		text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText + "\nclient state: " + (window.chat ? window.chat.state : "no client")`))
		t.Fatalf("%s: %v\npage:\n%s", step, err, text)
	}
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func waitHTTP(t *testing.T, url string) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer 200 in 20 s", url)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
