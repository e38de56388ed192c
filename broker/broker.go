package broker

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/groupcast/groupcast/broker/presence"
)

// RegionHeader is the NATS header naming the region a message was
// published in. Deliveries show it as "region"; publishers other than
// groupcast may set it too.
const RegionHeader = "Groupcast-Region"

// ExcludeHeader is the NATS header naming a channel that a group message
// is not delivered to (Channels' broadcast to the others), on whichever
// node the channel lives.
const ExcludeHeader = "Groupcast-Exclude"

// Errors returned by the Broker. Callers map them to protocol error codes.
var (
	// ErrUnavailable means NATS cannot take the operation now (disconnected,
	// reconnecting, or the broker is closing). Retrying later may succeed.
	ErrUnavailable = errors.New("broker: NATS unavailable")
	// ErrInvalidData means a payload is not a single valid JSON value.
	ErrInvalidData = errors.New("broker: payload is not valid JSON")
	// ErrUnknownChannel means the channel is not open on this node.
	ErrUnknownChannel = errors.New("broker: channel not open on this node")
	// ErrTooLarge means a payload is over the NATS server's maximum.
	ErrTooLarge = errors.New("broker: payload too large")
)

// Config configures a Broker. The zero value, with a Logger, is a working
// development setup: an embedded NATS server with no TCP listener. Zero
// (or negative) fields take the defaults of DefaultConfig.
type Config struct {
	// URL lists external NATS servers, comma-separated (nats:// or tls://).
	// Empty starts an embedded server in this process.
	URL string
	// Node identifies this instance in channel names, subjects and the NATS
	// connection name: 1–64 letters, digits, '-' or '_'. Default: random.
	Node string
	// Region labels this instance in its NATS connection name, and the
	// messages it publishes (the RegionHeader), so that deliveries carry
	// their origin region. Optional; letters, digits, '-' and '_'.
	Region string
	// Prefix starts every subject. Dot-separated tokens of letters, digits,
	// '-' and '_'. Default "groupcast".
	Prefix string

	// CredsFile is a NATS credentials file (user JWT and nkey seed).
	CredsFile string
	// NKeyFile is a file holding an nkey seed.
	NKeyFile string
	// Token is a NATS authentication token.
	Token string
	// TLSCA is a PEM file of CAs that sign the servers' certificates.
	TLSCA string
	// TLSCert and TLSKey are a PEM client certificate and its key.
	TLSCert, TLSKey string

	// ListenAddr makes the embedded server listen on TCP (host:port), for
	// local tools such as the nats CLI. Default "": in-process only.
	ListenAddr string
	// MaxPayload is the embedded server's largest message, in bytes.
	// Default 1 MiB. (An external server announces its own.)
	MaxPayload int

	// PingInterval is how often the client pings the server; two missed
	// pongs mark the connection dead. Default 10s.
	PingInterval time.Duration
	// ReconnectWait is the base wait between reconnect attempts, with as
	// much jitter again. Default 500ms. Attempts never stop.
	ReconnectWait time.Duration
	// ConnectTimeout bounds each dial to an external server. Default 2s.
	ConnectTimeout time.Duration
	// DrainTimeout bounds Close's drain of the NATS connection. Default 3s.
	DrainTimeout time.Duration
	// FlushTimeout bounds how long a group's first join waits for the NATS
	// server to confirm the subscription. Default 5s.
	FlushTimeout time.Duration
	// QueueLen bounds the messages received from NATS and not yet fanned
	// out, per dispatch goroutine. Beyond it NATS drops messages for this
	// node (a slow consumer, logged and counted). Default 8192.
	QueueLen int
	// OnFanout, when set, is called after each fan-out to the node's
	// members of a group (one message, or several that had queued up and
	// went out together), with the members reached and the time it took.
	// It runs on the dispatch goroutine: keep it cheap (a histogram
	// observation).
	OnFanout func(members int, took time.Duration)

	// Policies choose how groups keep their messages (first match wins;
	// unmatched groups are AtMostOnce; see CheckPolicies). Recoverable and Latest groups are
	// kept in JetStream, which the embedded server then runs and an
	// external cluster must offer.
	Policies []PolicyRule
	// HistorySize is how many messages a recoverable group keeps, and the
	// most a resume replays. Default 1000.
	HistorySize int
	// HistoryTTL is how long kept messages live. Default 1h.
	HistoryTTL time.Duration
	// FileStore keeps history on disk (in StoreDir when embedded) instead
	// of in memory. Default false: memory.
	FileStore bool
	// StoreDir is the embedded server's JetStream directory, required with
	// FileStore; without it a temporary directory is used and removed.
	StoreDir string
	// MaxReplays bounds the history reads (resumes' replays and History
	// calls) that run at once on this node, each with at most
	// replayBatchBytes in flight; more wait up to replayWait for a turn,
	// then fail with ErrUnavailable. Default 8.
	MaxReplays int
	// DedupWindow is how long an idempotency key is remembered. Default 2m.
	DedupWindow time.Duration
	// Replicas is the number of copies of each history stream in a
	// cluster. Default 1.
	Replicas int
	// HistoryRegion, in a supercluster, is the NATS cluster that holds the
	// history streams. Nodes connected to another cluster keep a mirror of
	// each stream in their own cluster and read from it (same offsets, same
	// epoch), so history stays readable there when the history's cluster
	// is lost; kept publishes still need that cluster. Empty: the streams
	// live where they were first created and are read there.
	HistoryRegion string

	// Presence lists the groups whose members are tracked (see
	// PresenceGet): group patterns (see ValidPattern). Default none:
	// presence costs nothing.
	Presence []string
	// PresenceInterval is how often a node sends its presence heartbeat;
	// a node silent for three intervals is dropped. Default 1s.
	PresenceInterval time.Duration
	// MaxPresenceGroups bounds the presence groups this node has members
	// in; a member's presence in one more is refused with ErrUnavailable.
	// Default 10000.
	MaxPresenceGroups int
	// PresenceTimeout bounds how long a presence query waits for the
	// other nodes. Default 250ms.
	PresenceTimeout time.Duration

	// Logger receives the broker's and the embedded server's logs. Required.
	Logger *slog.Logger
}

// DefaultConfig returns the values New gives a Config's zero fields (a
// zero Node becomes a random id), so that callers can show them or start
// from them.
func DefaultConfig() Config {
	return Config{
		Prefix:            "groupcast",
		MaxPayload:        1 << 20,
		PingInterval:      10 * time.Second,
		ReconnectWait:     500 * time.Millisecond,
		ConnectTimeout:    2 * time.Second,
		DrainTimeout:      3 * time.Second,
		FlushTimeout:      5 * time.Second,
		QueueLen:          8192,
		HistorySize:       1000,
		HistoryTTL:        time.Hour,
		DedupWindow:       2 * time.Minute,
		Replicas:          1,
		PresenceInterval:  time.Second,
		MaxReplays:        8,
		MaxPresenceGroups: 10_000,
		PresenceTimeout:   250 * time.Millisecond,
	}
}

// Why a Config is refused; New wraps them with the value.
var (
	// ErrStoreDir: FileStore with the embedded server and no StoreDir.
	ErrStoreDir = errors.New("broker: file storage with the embedded server needs a store directory")
	errID       = errors.New("want 1-64 letters, digits, '-' or '_'")
	errPrefix   = errors.New("want dot-separated tokens of letters, digits, '-' or '_'")
	errPresence = errors.New("want a group name or a prefix ending in '*'")
)

// CheckID reports why id cannot be a Config.Node or Config.Region, or nil.
func CheckID(id string) error {
	if !validToken(id) {
		return errID
	}
	return nil
}

// CheckPrefix reports why p cannot be a Config.Prefix, or nil.
func CheckPrefix(p string) error {
	if !validPrefix(p) {
		return errPrefix
	}
	return nil
}

// CheckPresence reports why patterns cannot be Config.Presence, or nil.
func CheckPresence(patterns []string) error {
	for _, p := range patterns {
		if !ValidPattern(p) {
			return fmt.Errorf("pattern %q: %w", p, errPresence)
		}
	}
	return nil
}

func (c *Config) setDefaults() error {
	if c.Logger == nil {
		return errors.New("broker: Config.Logger is required")
	}
	d := DefaultConfig()
	if c.Node == "" {
		c.Node = randomID(10)
	}
	if err := CheckID(c.Node); err != nil {
		return fmt.Errorf("broker: node id %q: %w", c.Node, err)
	}
	if c.Region != "" {
		if err := CheckID(c.Region); err != nil {
			return fmt.Errorf("broker: region %q: %w", c.Region, err)
		}
	}
	c.Prefix = cmp.Or(c.Prefix, d.Prefix)
	if err := CheckPrefix(c.Prefix); err != nil {
		return fmt.Errorf("broker: subject prefix %q: %w", c.Prefix, err)
	}
	c.MaxPayload = cmp.Or(max(c.MaxPayload, 0), d.MaxPayload)
	c.PingInterval = cmp.Or(max(c.PingInterval, 0), d.PingInterval)
	c.ReconnectWait = cmp.Or(max(c.ReconnectWait, 0), d.ReconnectWait)
	c.ConnectTimeout = cmp.Or(max(c.ConnectTimeout, 0), d.ConnectTimeout)
	c.DrainTimeout = cmp.Or(max(c.DrainTimeout, 0), d.DrainTimeout)
	c.FlushTimeout = cmp.Or(max(c.FlushTimeout, 0), d.FlushTimeout)
	c.QueueLen = cmp.Or(max(c.QueueLen, 0), d.QueueLen)
	c.MaxReplays = cmp.Or(max(c.MaxReplays, 0), d.MaxReplays)
	if err := CheckPolicies(c.Policies); err != nil {
		return fmt.Errorf("broker: policies: %w", err)
	}
	c.HistorySize = cmp.Or(max(c.HistorySize, 0), d.HistorySize)
	c.HistoryTTL = cmp.Or(max(c.HistoryTTL, 0), d.HistoryTTL)
	c.DedupWindow = cmp.Or(max(c.DedupWindow, 0), d.DedupWindow)
	c.Replicas = cmp.Or(max(c.Replicas, 0), d.Replicas)
	if c.FileStore && c.URL == "" && c.StoreDir == "" {
		return ErrStoreDir
	}
	if err := CheckPresence(c.Presence); err != nil {
		return fmt.Errorf("broker: presence: %w", err)
	}
	c.PresenceInterval = cmp.Or(max(c.PresenceInterval, 0), d.PresenceInterval)
	c.PresenceTimeout = cmp.Or(max(c.PresenceTimeout, 0), d.PresenceTimeout)
	c.MaxPresenceGroups = cmp.Or(max(c.MaxPresenceGroups, 0), d.MaxPresenceGroups)
	return nil
}

// Kind says what a delivered frame is, so that a transport need not read
// its bytes to decide how to write it.
type Kind uint8

const (
	// KindMessage is one or more message frames (a delivery, or a chunk
	// of a replay): what a transport may hold back to batch.
	KindMessage Kind = iota
	// KindControl is any other frame (gap, presence): written at once.
	KindControl
)

// A Delivery is what a Receiver takes: encoded server frames (one JSON
// object, or several separated by '\n'; see package protocol) and their
// kind. Frame is shared by every receiver of the message and must not be
// modified; it stays valid after Receive returns.
type Delivery struct {
	Frame []byte
	Kind  Kind
}

// A Receiver takes the frames delivered to one channel.
//
// Receive is called from the broker's dispatch goroutines, possibly while
// a group's member list is read-locked: it must not block and must not call
// the Broker.
type Receiver interface {
	Receive(d Delivery)
}

// An ImmediateReceiver can also take frames on the caller's goroutine
// when that costs less than queueing them: a write that cannot block, to
// a connection with nothing queued. Group messages (of any group size,
// see fanout.go) and direct sends go through ReceiveNow, and through
// Receive, one by one, when it declines.
type ImmediateReceiver interface {
	Receiver
	// ReceiveNow takes every frame of ds, in order, at once and reports
	// true, or declines them all and reports false, leaving them to
	// Receive. It must not block (waiting a moment for another such
	// call to the same receiver, which does not block either, is
	// allowed), nor keep ds (the Frames it may keep), nor call the Broker.
	ReceiveNow(ds []Delivery) bool
}

// A ClosingReceiver can tell that it takes no more frames (it is closing,
// say as a slow consumer): a replay to it then stops reading history.
type ClosingReceiver interface {
	Receiver
	Closing() bool
}

// closing reports whether r said it takes no more frames.
func closing(r Receiver) bool {
	cr, ok := r.(ClosingReceiver)
	return ok && cr.Closing()
}

// Broker is the channel layer of one node: channels (one per connection),
// groups of channels, and fan-out over NATS. Its methods are safe for
// concurrent use.
type Broker struct {
	cfg    Config
	log    *slog.Logger
	nc     *nats.Conn
	ns     *server.Server // nil with an external cluster
	closed chan struct{}  // closed when nc is closed for good

	groupPrefix  string // "<prefix>.group."
	directPrefix string // "<prefix>.direct.<node>."

	shards  []chan *nats.Msg
	jobs    chan *share // fan-out shares for the fan-out workers
	seed    maphash.Seed
	stop    chan struct{}
	workers sync.WaitGroup
	direct  *nats.Subscription
	flusher *flusher
	history *history // nil without recoverable or latest groups
	tmpDir  string   // the embedded server's temporary store, removed at Close

	presence *presence.Manager // nil: no presence groups

	commands, broadcasts *nats.Subscription
	onCommand            atomic.Pointer[func(cmd []byte)]

	mu       sync.RWMutex
	groups   map[string]*group             // live groups by name
	bySub    map[*nats.Subscription]*group // for dispatch
	channels map[string]*member            // open channels by name
	closing  bool

	nextConn  atomic.Uint64
	closeOnce sync.Once
	closeErr  error
	stats     counters
}

// group is one group with local members, and its NATS subscription.
type group struct {
	name  string
	refs  int           // Broker.mu: members plus joins in flight
	ready chan struct{} // closed once the subscription is live, or failed
	err   error         // why it failed; written before ready is closed
	sub   *nats.Subscription
	kept  *stream // the history stream, nil for an at-most-once group
	// lastSeq is the offset of the last kept message dispatched.
	lastSeq atomic.Uint64

	// mu guards members, index and recovering; it is read-held during
	// fan-out. Where both are held, it is taken before Broker.mu
	// (GroupJoin): nothing that holds Broker.mu waits for it.
	mu         sync.RWMutex
	waiting    atomic.Int32 // joins and leaves waiting for mu: a sweep ends for them
	members    []*member
	index      map[*member]int
	recovering map[*member]*recovery // members whose history is being replayed
}

// member is one open channel.
type member struct {
	name   string
	recv   Receiver
	now    ImmediateReceiver // recv, when it is one
	groups map[string]*group // Broker.mu
	closed bool              // Broker.mu
}

// New connects to NATS (starting the embedded server when cfg.URL is
// empty) and returns a Broker. With an external cluster New does not wait
// for the first connection: Ready reports it. Close releases everything.
func New(cfg Config) (*Broker, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	b := &Broker{
		cfg:          cfg,
		log:          cfg.Logger.With("component", "broker"),
		closed:       make(chan struct{}),
		groupPrefix:  cfg.Prefix + ".group.",
		directPrefix: cfg.Prefix + ".direct." + cfg.Node + ".",
		seed:         maphash.MakeSeed(),
		stop:         make(chan struct{}),
		groups:       make(map[string]*group),
		bySub:        make(map[*nats.Subscription]*group),
		channels:     make(map[string]*member),
	}
	if cfg.URL == "" && cfg.needsJetStream() && cfg.StoreDir == "" {
		dir, err := os.MkdirTemp("", "groupcast-jetstream-")
		if err != nil {
			return nil, fmt.Errorf("broker: JetStream store: %w", err)
		}
		b.tmpDir, b.cfg.StoreDir = dir, dir
	}
	if cfg.needsJetStream() {
		b.history = &history{}
	}
	nc, ns, err := connect(&b.cfg, b.handlers())
	if err != nil {
		os.RemoveAll(b.tmpDir)
		return nil, err
	}
	b.nc, b.ns = nc, ns
	b.flusher = newFlusher(nc, cfg.FlushTimeout)
	if b.history != nil {
		if err := newHistory(b, b.history); err != nil {
			b.Close(context.Background())
			return nil, err
		}
	}

	fanners := fanoutWorkers()
	b.jobs = make(chan *share) // unbuffered: a share is handed only to a free worker
	for range fanners {
		b.workers.Add(1)
		go b.fanWorker()
	}
	n := min(runtime.GOMAXPROCS(0), 16)
	b.shards = make([]chan *nats.Msg, n)
	for i := range b.shards {
		b.shards[i] = make(chan *nats.Msg, cfg.QueueLen)
		b.workers.Add(1)
		go b.dispatchLoop(b.shards[i], newSplitter(fanners))
	}
	if b.history != nil {
		b.workers.Add(1)
		go b.watchHistory(b.stop)
	}
	b.direct, err = nc.ChanSubscribe(b.directPrefix+"*", b.shards[0])
	if err == nil {
		if b.commands, err = nc.ChanSubscribe(cfg.Prefix+".command."+cfg.Node, b.shards[0]); err == nil {
			b.broadcasts, err = nc.ChanSubscribe(cfg.Prefix+".command.all", b.shards[0])
		}
	}
	if err == nil && len(cfg.Presence) > 0 {
		b.presence, err = newPresence(b)
	}
	if err != nil {
		b.Close(context.Background())
		return nil, fmt.Errorf("broker: subscribe: %w", err)
	}
	if nc.IsConnected() {
		// The node's own subscriptions are live before New returns; when
		// not connected yet, they are sent on connecting.
		nc.FlushTimeout(cfg.FlushTimeout)
	}
	mode := "external"
	if ns != nil {
		mode = "embedded"
	}
	b.log.Info("broker started", "nats", mode, "node", cfg.Node, "prefix", cfg.Prefix)
	return b, nil
}

func (b *Broker) handlers() []nats.Option {
	return []nats.Option{
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil {
				return // a deliberate close
			}
			b.stats.disconnects.Add(1)
			if b.history != nil {
				// Unready until the streams are read again after the
				// reconnect; members are then told they may have a gap.
				b.history.down.Store(true)
			}
			b.log.Warn("NATS disconnected", "error", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			b.stats.reconnects.Add(1)
			b.log.Info("NATS reconnected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ConnectHandler(func(nc *nats.Conn) {
			b.log.Info("NATS connected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(b.closed) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) {
				b.stats.slowConsumer.Add(1)
			}
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			b.log.Error("NATS error", "error", err, "subject", subject)
		}),
	}
}

// Node returns this node's id.
func (b *Broker) Node() string { return b.cfg.Node }

// Embedded reports whether the broker runs its own NATS server.
func (b *Broker) Embedded() bool { return b.ns != nil }

// Ready returns nil when the broker can deliver: connected to NATS and not
// closing. Otherwise it returns an error wrapping ErrUnavailable.
func (b *Broker) Ready() error {
	b.mu.RLock()
	closing := b.closing
	b.mu.RUnlock()
	if closing {
		return fmt.Errorf("%w: closing", ErrUnavailable)
	}
	if s := b.nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("%w: %s", ErrUnavailable, s)
	}
	if b.history != nil && b.history.down.Load() {
		return fmt.Errorf("%w: history (JetStream) cannot be read", ErrUnavailable)
	}
	return nil
}

// GroupSubject returns the NATS subject of a valid group name.
func (b *Broker) GroupSubject(group string) string { return b.groupPrefix + group }

// NewChannel opens a channel on this node for r and returns its name,
// "<node>.<n>". Frames for the channel's groups and direct sends go to r
// until CloseChannel.
func (b *Broker) NewChannel(r Receiver) (string, error) {
	name := b.cfg.Node + "." + strconv.FormatUint(b.nextConn.Add(1), 36)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closing {
		return "", fmt.Errorf("%w: closing", ErrUnavailable)
	}
	now, _ := r.(ImmediateReceiver)
	b.channels[name] = &member{name: name, recv: r, now: now}
	return name, nil
}

// CloseChannel removes the channel from its groups and closes it. It is
// idempotent; after it returns, the channel's Receiver gets no more frames.
func (b *Broker) CloseChannel(channel string) {
	b.mu.Lock()
	m := b.channels[channel]
	if m == nil {
		b.mu.Unlock()
		return
	}
	delete(b.channels, channel)
	m.closed = true
	groups := make([]*group, 0, len(m.groups))
	for _, g := range m.groups {
		groups = append(groups, g)
	}
	clear(m.groups)
	subs := make([]*nats.Subscription, 0, len(groups))
	for _, g := range groups {
		if sub := b.releaseLocked(g); sub != nil {
			subs = append(subs, sub)
		}
	}
	b.mu.Unlock()
	for _, g := range groups {
		g.remove(m)
		b.presence.Remove(channel, g.name)
	}
	for _, sub := range subs {
		b.unsubscribe(sub)
	}
}

// GroupAdd adds a channel of this node to a group. When it returns nil the
// membership is live on this node's NATS server: any message published
// through that server afterwards reaches the channel (other servers of a
// cluster learn of it a route hop later, other regions a gateway hop
// later). The first local member subscribes the node to the group and
// waits for the server to confirm, bounded by ctx. Adding a channel twice
// is a no-op.
func (b *Broker) GroupAdd(ctx context.Context, groupName, channel string) error {
	_, err := b.GroupJoin(ctx, groupName, channel, nil)
	return err
}

// GroupJoin is GroupAdd that resumes: in a recoverable group, with since
// set, the channel first gets every kept message after since.Offset, then
// live ones, with no gap and no duplicate; Recovery says whether that was
// everything it missed. In a latest group the channel first gets the
// newest kept message. Replayed frames count against the receiver like
// any others.
func (b *Broker) GroupJoin(ctx context.Context, groupName, channel string, since *Since) (Recovery, error) {
	if !ValidGroup(groupName) {
		return Recovery{}, ErrInvalidGroup
	}
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		return Recovery{}, fmt.Errorf("%w: closing", ErrUnavailable)
	}
	m := b.channels[channel]
	if m == nil {
		b.mu.Unlock()
		return Recovery{}, ErrUnknownChannel
	}
	if g := m.groups[groupName]; g != nil {
		b.mu.Unlock()
		return Recovery{}, b.await(ctx, g)
	}
	g := b.groups[groupName]
	first := g == nil
	if first {
		g = &group{name: groupName, ready: make(chan struct{}), index: make(map[*member]int)}
		b.groups[groupName] = g
	}
	g.refs++
	if m.groups == nil {
		m.groups = make(map[string]*group)
	}
	m.groups[groupName] = g
	b.mu.Unlock()

	if first {
		b.subscribe(g)
	}
	if err := b.await(ctx, g); err != nil {
		b.discard(m, g)
		return Recovery{}, err
	}
	// The group's lock first, which waits for a fan-out under way, and
	// the Broker's only to look: a join that waits for a large group's
	// fan-out holds up no other group, publish or join. discard and
	// CloseChannel forget the membership under the Broker's lock and then
	// remove m from g under g's: they remove it after this add, or this
	// finds it gone.
	rec := &recovery{}
	g.lockMembers()
	b.mu.RLock()
	live := m.groups[groupName] == g // not discarded or closed meanwhile
	b.mu.RUnlock()
	if live {
		g.addLocked(m, rec)
	}
	g.mu.Unlock()
	if !live || g.kept == nil {
		return Recovery{}, nil
	}
	return b.recover(ctx, g, m, rec, since)
}

// subscribe makes g's subscription live: subscribe, then flush so the
// server has the interest. A failure is recorded in g for every joiner.
// The flush is bounded by Config.FlushTimeout, not by the first joiner's
// context, so that one impatient joiner does not fail the others.
func (b *Broker) subscribe(g *group) {
	var sub *nats.Subscription
	kept, err := b.history.streamOf(g.name)
	if err == nil && kept != nil {
		// A kept group is read through an ordered consumer, whose messages
		// carry their offset; it exists once the call returns, and takes
		// every message stored from then on.
		g.kept = kept
		read, _ := kept.reading()
		sub, err = b.history.js.ChanSubscribe(b.groupPrefix+g.name, b.shard(g.name),
			nats.OrderedConsumer(), nats.DeliverNew(), nats.BindStream(read))
		if err == nil {
			err = noteStart(g, sub)
		}
	} else if err == nil {
		sub, err = b.nc.ChanSubscribe(b.groupPrefix+g.name, b.shard(g.name))
	}
	if err == nil {
		b.mu.Lock()
		g.sub = sub
		b.bySub[sub] = g
		b.mu.Unlock()
		err = b.flusher.flush()
	}
	if err != nil {
		b.log.Warn("group subscribe failed", "group", g.name, "error", err)
		err = fmt.Errorf("%w: %v", ErrUnavailable, err)
		// Later joiners start afresh instead of inheriting this failure.
		b.mu.Lock()
		if b.groups[g.name] == g {
			delete(b.groups, g.name)
		}
		b.mu.Unlock()
	} else {
		b.stats.subscribes.Add(1)
	}
	g.err = err
	close(g.ready)
}

func (b *Broker) await(ctx context.Context, g *group) error {
	select {
	case <-g.ready:
		return g.err
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	}
}

// GroupDiscard removes a channel of this node from a group. After it
// returns the channel gets no more frames from the group. Discarding a
// channel that is not in the group is a no-op.
func (b *Broker) GroupDiscard(groupName, channel string) error {
	if !ValidGroup(groupName) {
		return ErrInvalidGroup
	}
	b.mu.RLock()
	m := b.channels[channel]
	b.mu.RUnlock()
	if m == nil {
		return ErrUnknownChannel
	}
	b.mu.Lock()
	g := m.groups[groupName]
	b.mu.Unlock()
	if g != nil {
		b.discard(m, g)
	}
	return nil
}

// discard takes m out of g, unsubscribing the node when m was the last.
func (b *Broker) discard(m *member, g *group) {
	b.mu.Lock()
	if m.groups[g.name] != g {
		b.mu.Unlock()
		return
	}
	delete(m.groups, g.name)
	sub := b.releaseLocked(g)
	b.mu.Unlock()
	g.remove(m)
	b.presence.Remove(m.name, g.name)
	if sub != nil {
		b.unsubscribe(sub)
	}
}

// releaseLocked drops one reference to g. When it was the last, g leaves
// the registry and its subscription is returned for unsubscribing.
func (b *Broker) releaseLocked(g *group) *nats.Subscription {
	g.refs--
	if g.refs > 0 {
		return nil
	}
	if b.groups[g.name] == g {
		delete(b.groups, g.name)
	}
	sub := g.sub
	if sub != nil {
		delete(b.bySub, sub)
	}
	return sub
}

func (b *Broker) unsubscribe(sub *nats.Subscription) {
	if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		b.log.Warn("group unsubscribe failed", "subject", sub.Subject, "error", err)
	}
	b.stats.unsubscribes.Add(1)
}

// GroupSend publishes data, one JSON value, to every member of the group
// on every node. It returns once NATS has taken the message.
func (b *Broker) GroupSend(groupName string, data []byte) error {
	_, err := b.GroupPublish(groupName, data, "")
	return err
}

// Source is who publishes, for idempotency keys: a key of one source
// never matches another's, nor one given for another group.
type Source string

// The sources of publishes.
const (
	// FromAPI is the server API (trusted backends).
	FromAPI Source = "api"
	// FromClient is a WebSocket client.
	FromClient Source = "client"
)

// GroupPublish is GroupSend that reports, for a recoverable or latest
// group, the message's offset once JetStream has stored it. With an
// idempotency key, a publish that repeats a key seen within
// Config.DedupWindow is not delivered again (Receipt.Duplicate); keys need
// a recoverable or latest group. Keys are the server API's (FromAPI).
func (b *Broker) GroupPublish(groupName string, data []byte, key string) (Receipt, error) {
	return b.GroupPublishWith(groupName, data, PublishOptions{Key: key})
}

// PublishOptions say who publishes and which channel is left out.
type PublishOptions struct {
	// Source scopes the idempotency key; FromAPI when empty.
	Source Source
	// Key is the idempotency key ("": none); recoverable and latest
	// groups only.
	Key string
	// Except is a channel not delivered to, live on any node ("": none).
	// A resume's replay of history still includes the message.
	Except string
}

// GroupPublishWith is GroupPublish with options: keys are scoped by the
// source and the group, so that a client's key can never swallow a
// backend's publish, nor one to another group.
func (b *Broker) GroupPublishWith(groupName string, data []byte, o PublishOptions) (Receipt, error) {
	key, except, source := o.Key, o.Except, cmp.Or(o.Source, FromAPI)
	if !ValidGroup(groupName) {
		return Receipt{}, ErrInvalidGroup
	}
	if except != "" && !ValidChannel(except) {
		return Receipt{}, ErrInvalidChannel
	}
	kept, err := b.history.streamOf(groupName)
	if err != nil {
		return Receipt{}, err
	}
	if kept == nil {
		if key != "" {
			return Receipt{}, ErrIdempotencyUnsupported
		}
		return Receipt{}, b.publish(b.groupPrefix+groupName, data, except)
	}
	if strings.ContainsFunc(key, unicode.IsControl) {
		return Receipt{}, fmt.Errorf("%w: an idempotency key holds no control characters", ErrInvalidData)
	}
	data, err = compactJSON(data)
	if err != nil {
		return Receipt{}, err
	}
	if err := b.Ready(); err != nil {
		return Receipt{}, err
	}
	msg := &nats.Msg{Subject: b.groupPrefix + groupName, Data: data, Header: nats.Header{}}
	if b.cfg.Region != "" {
		msg.Header.Set(RegionHeader, b.cfg.Region)
	}
	if key != "" {
		// Group names hold no space, so "<group> <source> <key>" is
		// one key per group and source.
		msg.Header.Set(nats.MsgIdHdr, groupName+" "+string(source)+" "+key)
	}
	if except != "" {
		msg.Header.Set(ExcludeHeader, except)
	}
	ack, err := b.history.js.PublishMsg(msg)
	if err != nil {
		if errors.Is(err, nats.ErrMaxPayload) {
			return Receipt{}, ErrTooLarge
		}
		return Receipt{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	b.stats.published.Add(1)
	return Receipt{Offset: ack.Sequence, Epoch: kept.currentEpoch(), Duplicate: ack.Duplicate}, nil
}

// Send publishes data, one JSON value, to one channel, on whichever node
// it lives. A message to a channel that no longer exists is dropped.
func (b *Broker) Send(channel string, data []byte) error {
	if !ValidChannel(channel) {
		return ErrInvalidChannel
	}
	return b.publish(b.cfg.Prefix+".direct."+channel, data, "")
}

// publish sends data to subject, with the region and, when except is
// set, the ExcludeHeader.
func (b *Broker) publish(subject string, data []byte, except string) error {
	data, err := compactJSON(data)
	if err != nil {
		return err
	}
	if int64(len(data)) > b.nc.MaxPayload() {
		return ErrTooLarge
	}
	if err := b.Ready(); err != nil {
		return err
	}
	msg := &nats.Msg{Subject: subject, Data: data}
	if b.cfg.Region != "" {
		msg.Header = nats.Header{RegionHeader: []string{b.cfg.Region}}
	}
	if except != "" {
		if msg.Header == nil {
			msg.Header = nats.Header{}
		}
		msg.Header.Set(ExcludeHeader, except)
	}
	if err := b.nc.PublishMsg(msg); err != nil {
		if errors.Is(err, nats.ErrMaxPayload) {
			return ErrTooLarge
		}
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	b.stats.published.Add(1)
	return nil
}

// HandleCommands sets the function that receives the commands sent to
// this node with Command, or to every node with Broadcast (on the subjects
// <prefix>.command.<node> and <prefix>.command.all). It runs on a dispatch
// goroutine and must not block. Until it is set, commands are dropped.
func (b *Broker) HandleCommands(f func(cmd []byte)) { b.onCommand.Store(&f) }

// Command sends cmd to the node that owns channel, for its command
// handler. Like a publish, it returns once NATS has taken it.
func (b *Broker) Command(channel string, cmd []byte) error {
	node, _, ok := splitChannel(channel)
	if !ok {
		return ErrInvalidChannel
	}
	return b.command(b.cfg.Prefix+".command."+node, cmd)
}

// Broadcast sends cmd to every node, this one included.
func (b *Broker) Broadcast(cmd []byte) error {
	return b.command(b.cfg.Prefix+".command.all", cmd)
}

func (b *Broker) command(subject string, cmd []byte) error {
	if err := b.Ready(); err != nil {
		return err
	}
	if err := b.nc.Publish(subject, cmd); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}

// Close closes every channel, drains the NATS connection (bounded by ctx
// and Config.DrainTimeout), stops the dispatch goroutines and, when
// embedded, the NATS server. It is idempotent.
func (b *Broker) Close(ctx context.Context) error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		b.closing = true
		names := make([]string, 0, len(b.channels))
		for name := range b.channels {
			names = append(names, name)
		}
		b.mu.Unlock()
		for _, name := range names {
			b.CloseChannel(name)
		}
		b.presence.Close()
		b.history.close()
		b.closeErr = closeConn(ctx, b.nc, b.closed, b.ns)
		if b.tmpDir != "" {
			os.RemoveAll(b.tmpDir)
		}
		close(b.stop)
		b.workers.Wait()
		b.log.Info("broker stopped")
	})
	return b.closeErr
}

// addLocked makes m a member (g.mu held); in a kept group its frames go
// to rec until recovered is called.
func (g *group) addLocked(m *member, rec *recovery) {
	if _, ok := g.index[m]; !ok {
		g.index[m] = len(g.members)
		g.members = append(g.members, m)
		if g.kept != nil {
			if g.recovering == nil {
				g.recovering = make(map[*member]*recovery)
			}
			g.recovering[m] = rec
			rec.after = g.lastSeq.Load()
		}
	}
}

func (g *group) remove(m *member) {
	g.lockMembers()
	if delete(g.recovering, m); len(g.recovering) == 0 {
		g.recovering = nil
	}
	if i, ok := g.index[m]; ok {
		last := len(g.members) - 1
		g.members[i] = g.members[last]
		g.index[g.members[i]] = i
		g.members[last] = nil
		g.members = g.members[:last]
		delete(g.index, m)
	}
	g.mu.Unlock()
}

// lockMembers write-locks g.mu for a join or leave, telling a sweep under
// way to end and let it in (see catchUp).
func (g *group) lockMembers() {
	g.waiting.Add(1)
	g.mu.Lock()
	g.waiting.Add(-1)
}

// shard picks the dispatch queue of a subject, so that each group's
// messages are fanned out in order by one goroutine.
func (b *Broker) shard(key string) chan *nats.Msg {
	return b.shards[maphash.String(b.seed, key)%uint64(len(b.shards))]
}

func randomID(n int) string {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
	buf := make([]byte, n)
	rand.Read(buf)
	for i, c := range buf {
		buf[i] = alphabet[int(c)%len(alphabet)]
	}
	return string(buf)
}
