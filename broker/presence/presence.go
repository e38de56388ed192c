// Package presence tracks who is in a group, on every node and in every
// region, over NATS subjects: the broker's presence manager.
//
// The broker decides which groups are presence groups (its
// Config.Presence) and validates what callers pass; a Manager needs of
// it only a Bus to publish and subscribe on.
//
// A node keeps its own members of each presence group and learns of
// other nodes over four kinds of subjects (with prefix P):
//
//	P.presence.nodes            heartbeats: {"node","region","groups":[...]} every Config.Interval
//	P.presence.events.<group>   join and leave events of <group>'s members
//	P.presence.query.<group>    requests; each node with members answers with its own
//
// A query is a scatter-gather: the asking node answers for itself and
// waits, at most Config.Timeout, for the nodes whose last heartbeat lists
// the group. A node whose heartbeats stop for three intervals (killed,
// partitioned) is dropped: its members vanish from answers, and leave
// events for them are sent to the local members that asked for events.
// When it comes back, its members are fetched again and join events sent.
package presence

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/groupcast/groupcast/protocol"
	"github.com/nats-io/nats.go"
)

// ErrClosed is returned by Add once Close has begun.
var ErrClosed = errors.New("closing")

// Limits.
const (
	// MaxLimit bounds the members one query returns.
	MaxLimit = 1000
	// MaxInfo bounds a member's info, in bytes of JSON.
	MaxInfo = 1024
	// MaxUserLen bounds a member's user id.
	MaxUserLen = 256
	// MissedBeats is how many heartbeats a node may miss before it counts
	// as gone.
	MissedBeats = 3
	// maxSyncMembers bounds the members one node sends when another node
	// resynchronises its view of a group (and for queries folded by user).
	maxSyncMembers = 5000
	// presenceQueue bounds presence messages received and not yet handled.
	presenceQueue = 8192
	// syncQueue bounds the groups waiting to be resynchronised.
	syncQueue = 1024
)

// Member is one connection present in a group.
type Member struct {
	Channel string          `json:"channel"`
	User    string          `json:"user,omitempty"`
	Region  string          `json:"region,omitempty"`
	Info    json.RawMessage `json:"info,omitempty"`
	// Channels is, in answers folded by user, how many connections the
	// user has in the group (zero otherwise).
	Channels int `json:"channels,omitempty"`
}

// Query asks who is in a group.
type Query struct {
	// Limit bounds the members listed, 0 to MaxLimit; 0 asks for
	// the count alone, which costs each node O(1).
	Limit int
	// ByUser folds the connections of one user into one entry (anonymous
	// connections stay one entry each); Count is then the number of users.
	ByUser bool
}

// Result answers a Query.
type Result struct {
	Count   int      `json:"count"`
	Members []Member `json:"members"`
	// Partial is true when a node known to have members did not answer
	// within Config.Timeout.
	Partial bool `json:"partial,omitempty"`
}

// Events says which presence events a member receives.
type Events int

// The kinds of Events.
const (
	// NoEvents: none.
	NoEvents Events = iota
	// AllEvents: a join and a leave event for every connection.
	AllEvents
	// UserEvents folds the connections of one user: a join event when the
	// user's first connection joins, a leave event when the last leaves
	// (as far as this node knows). Anonymous connections count one by one.
	UserEvents
)

// heartbeat is a node's message on <prefix>.presence.nodes: the presence
// groups where it has members; Bye when it is closing. A list too large
// for one NATS message goes in Parts messages, Part 0 first: each keeps
// the node alive, and the list counts (for the groups it left) once the
// last is in.
type heartbeat struct {
	Node   string   `json:"node"`
	Region string   `json:"region,omitempty"`
	Groups []string `json:"groups"`
	Bye    bool     `json:"bye,omitempty"`
	Part   int      `json:"part,omitempty"`
	Parts  int      `json:"parts,omitempty"`
}

// heartbeatParts is a split heartbeat being put together.
type heartbeatParts struct {
	next   int
	groups []string
}

// presenceEvent is a message on <prefix>.presence.events.<group>.
type presenceEvent struct {
	Event  string `json:"event"` // "join" or "leave"
	Node   string `json:"node"`
	Member Member `json:"member"`
}

// presenceRequest is a query on <prefix>.presence.query.<group>.
type presenceRequest struct {
	Limit  int  `json:"limit"`
	ByUser bool `json:"by_user,omitempty"`
}

// presenceReply is one node's answer to a presenceRequest: its count and
// up to the limit of its members, sorted.
type presenceReply struct {
	Node      string   `json:"node"`
	Count     int      `json:"count"`
	Members   []Member `json:"members,omitempty"`
	Truncated bool     `json:"truncated,omitempty"`
}

// Bus is what a Manager needs of the NATS connection; *nats.Conn is one.
type Bus interface {
	Publish(subject string, data []byte) error
	PublishRequest(subject, reply string, data []byte) error
	ChanSubscribe(subject string, ch chan *nats.Msg) (*nats.Subscription, error)
	NewRespInbox() string
	MaxPayload() int64
}

// Receiver takes the presence event frames of a local member that asked
// for events. Receive must not block.
type Receiver interface {
	Receive(frame []byte)
}

// Config configures a Manager. Every field is required but Region.
type Config struct {
	Bus Bus
	// Ready reports why the bus cannot carry a query now (nil: it can);
	// a query then answers with this node's members alone, as partial.
	Ready func() error
	// Prefix prefixes every subject ("<prefix>.presence.").
	Prefix       string
	Node, Region string
	// Interval is the heartbeat interval; Timeout bounds a query's wait.
	Interval, Timeout time.Duration
	// MaxGroups bounds the presence groups with local members.
	MaxGroups int
	// ValidNode and ValidChannel check the node ids and member channels
	// that other nodes send.
	ValidNode, ValidChannel func(string) bool
	Logger                  *slog.Logger
}

// Manager is one node's presence: its members of each presence group
// and its view of the other nodes'. Its methods are safe for concurrent
// use; Remove and Close of a nil Manager do nothing. Lock order: the
// caller's locks, then mu.
type Manager struct {
	cfg          Config
	bus          Bus
	log          *slog.Logger
	interval     time.Duration
	timeout      time.Duration
	prefix       string // "<prefix>.presence."
	in           chan *nats.Msg
	syncs        chan syncTask
	heartbeatNow chan struct{} // asks for a heartbeat now
	nodes        *nats.Subscription
	stop         chan struct{}
	wg           sync.WaitGroup

	mu      sync.Mutex
	groups  map[string]*pgroup         // presence groups with local members
	peers   map[string]*peer           // other live nodes, by id
	pending map[string]bool            // groups queued for a resync
	parts   map[string]*heartbeatParts // split heartbeats, by node
	max     int                        // Config.MaxGroups
	closed  bool
}

// syncTask asks for a group's members from the other nodes. A full one
// (a group new on this node) waits for every answer until the timeout,
// since the nodes holding members may not be known yet.
type syncTask struct {
	group string
	full  bool
}

// peer is another live node, as its heartbeats tell.
type peer struct {
	seen     time.Time
	groups   map[string]bool
	unsynced map[string]bool // groups whose members were not fetched yet
}

// pgroup is a presence group with members on this node: the local
// members, and this node's view of the other nodes' members (kept for
// the leave events of a node that dies).
type pgroup struct {
	name          string
	local         map[string]*plocal            // by channel
	listeners     map[string]*plocal            // those of local that asked for events
	users         map[string]int                // user -> its connections here and on the nodes known
	localUsers    map[string]map[string]*plocal // user -> its local members, by channel
	anonymous     int                           // local members without a user
	remote        map[string]map[string]remote  // node -> channel -> member
	gone          map[string]uint64             // channel -> gen of its leave, while a resync runs
	gen           uint64
	syncing       bool
	events, query *nats.Subscription
}

// plocal is a member on this node.
type plocal struct {
	m      Member
	recv   Receiver
	events Events
}

// listen sets which events a local member receives.
func (g *pgroup) listen(channel string, l *plocal, events Events) {
	l.events = events
	if events != NoEvents {
		g.listeners[channel] = l
	} else {
		delete(g.listeners, channel)
	}
}

// count adds n (1 or -1) to the connections of m's user and reports
// whether that made it the user's first or last: the folded events' edge.
func (g *pgroup) count(m Member, n int) bool {
	if m.User == "" {
		return true
	}
	c := g.users[m.User] + n
	if c <= 0 {
		delete(g.users, m.User)
		return true
	}
	g.users[m.User] = c
	return n > 0 && c == 1
}

// addLocal and removeLocal keep the per-user counts of local members.
func (g *pgroup) addLocal(l *plocal) {
	if l.m.User == "" {
		g.anonymous++
		return
	}
	conns := g.localUsers[l.m.User]
	if conns == nil {
		conns = make(map[string]*plocal)
		g.localUsers[l.m.User] = conns
	}
	conns[l.m.Channel] = l
}

func (g *pgroup) removeLocal(l *plocal) {
	if l.m.User == "" {
		g.anonymous--
		return
	}
	conns := g.localUsers[l.m.User]
	if delete(conns, l.m.Channel); len(conns) == 0 {
		delete(g.localUsers, l.m.User)
	}
}

// localByUser returns the first limit local entries folded by user, in
// member order (anonymous members are one entry each), without folding
// every member: each user's entry is its first channel, with Channels
// its count.
func (g *pgroup) localByUser(limit int) []Member {
	out := make([]Member, 0, min(limit, len(g.localUsers)+g.anonymous))
	less := func(a, b Member) bool { return a.User < b.User || a.User == b.User && a.Channel < b.Channel }
	keep := func(m Member) { // out stays sorted and at most limit long
		if len(out) == limit && !less(m, out[len(out)-1]) {
			return
		}
		i, _ := slices.BinarySearchFunc(out, m, func(a, b Member) int {
			return cmp.Or(cmp.Compare(a.User, b.User), cmp.Compare(a.Channel, b.Channel))
		})
		if len(out) == limit {
			out = out[:len(out)-1]
		}
		out = slices.Insert(out, i, m)
	}
	if g.anonymous > 0 {
		for _, l := range g.local {
			if l.m.User == "" {
				m := l.m
				m.Channels = 1
				keep(m)
			}
		}
	}
	for user, conns := range g.localUsers {
		if len(out) == limit && user >= out[len(out)-1].User {
			continue
		}
		var first Member
		for _, l := range conns {
			if first.Channel == "" || l.m.Channel < first.Channel {
				first = l.m
			}
		}
		first.Channels = len(conns)
		keep(first)
	}
	return out
}

// remote is a member on another node, with the gen it was learnt at.
type remote struct {
	m   Member
	gen uint64
}

// New subscribes to the heartbeats and starts the goroutines that Close
// stops.
func New(cfg Config) (*Manager, error) {
	p := &Manager{
		cfg:          cfg,
		bus:          cfg.Bus,
		log:          cfg.Logger,
		interval:     cfg.Interval,
		timeout:      cfg.Timeout,
		prefix:       cfg.Prefix + ".presence.",
		in:           make(chan *nats.Msg, presenceQueue),
		syncs:        make(chan syncTask, syncQueue),
		heartbeatNow: make(chan struct{}, 1),
		stop:         make(chan struct{}),
		groups:       make(map[string]*pgroup),
		peers:        make(map[string]*peer),
		pending:      make(map[string]bool),
		parts:        make(map[string]*heartbeatParts),
		max:          cfg.MaxGroups,
	}
	var err error
	if p.nodes, err = p.bus.ChanSubscribe(p.prefix+"nodes", p.in); err != nil {
		return nil, err
	}
	p.wg.Add(2)
	go p.loop()
	go p.syncLoop()
	return p, nil
}

// Add makes m, a member of this node, present in group; a join event
// goes to the group's members that asked for events. With events other
// than NoEvents, recv takes the group's join and leave events (of
// others) as {"type":"presence",...} frames. Adding a present channel
// again only sets events. The caller has validated group and m (Info is
// compact JSON of at most MaxInfo bytes, User at most MaxUserLen) and
// calls Remove when the channel leaves the group or closes.
func (p *Manager) Add(group string, m Member, recv Receiver, events Events) error {
	channel := m.Channel
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	g := p.groups[group]
	fresh := g == nil
	if fresh && len(p.groups) >= p.max {
		p.mu.Unlock()
		return fmt.Errorf("this node has members in %d presence groups, the most it tracks", p.max)
	}
	if fresh {
		g = &pgroup{name: group, local: make(map[string]*plocal), listeners: make(map[string]*plocal), users: make(map[string]int), localUsers: make(map[string]map[string]*plocal), remote: make(map[string]map[string]remote), gone: make(map[string]uint64)}
		var err error
		if g.events, err = p.bus.ChanSubscribe(p.prefix+"events."+group, p.in); err == nil {
			if g.query, err = p.bus.ChanSubscribe(p.prefix+"query."+group, p.in); err != nil {
				g.events.Unsubscribe()
			}
		}
		if err != nil {
			p.mu.Unlock()
			return err
		}
		p.groups[group] = g
	}
	if l := g.local[channel]; l != nil {
		g.listen(channel, l, events)
		p.mu.Unlock()
		return nil
	}
	mem := m
	mem.Region = p.cfg.Region
	l := &plocal{m: mem, recv: recv}
	g.local[channel] = l
	g.addLocal(l)
	g.listen(channel, l, events)
	ev := p.encodeEvent(group, "join", mem)
	g.deliver(ev.event, ev.m, g.count(mem, 1))
	p.publish(p.prefix+"events."+group, ev.wire) // under p.mu: see heartbeat
	p.mu.Unlock()
	if fresh {
		select { // tell the other nodes at once that it has members here
		case p.heartbeatNow <- struct{}{}:
		default:
		}
		p.queueSync(syncTask{group: group, full: true})
	}
	return nil
}

// Remove takes a channel out of the presence of groups, with leave
// events.
func (p *Manager) Remove(channel string, groups ...string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock() // held while publishing: see heartbeat
	for _, group := range groups {
		g := p.groups[group]
		if g == nil {
			continue
		}
		l := g.local[channel]
		if l == nil {
			continue
		}
		delete(g.local, channel)
		g.removeLocal(l)
		delete(g.listeners, channel)
		ev := p.encodeEvent(group, "leave", l.m)
		g.deliver(ev.event, ev.m, g.count(l.m, -1))
		p.publish(p.prefix+"events."+group, ev.wire)
		if len(g.local) == 0 {
			g.events.Unsubscribe()
			g.query.Unsubscribe()
			delete(p.groups, group)
		}
	}
}

func (p *Manager) publish(subject string, data []byte) {
	if err := p.bus.Publish(subject, data); err != nil {
		p.log.Debug("presence publish failed", "subject", subject, "error", err)
	}
}

type encodedEvent struct {
	group, event string
	m            Member
	wire         []byte
}

func (p *Manager) encodeEvent(group, event string, m Member) encodedEvent {
	wire, _ := json.Marshal(presenceEvent{Event: event, Node: p.cfg.Node, Member: m})
	return encodedEvent{group: group, event: event, m: m, wire: wire}
}

// eventFrame encodes the frame members receive.
func eventFrame(group, event string, m Member) []byte {
	member, _ := json.Marshal(m) // a Member always encodes
	return protocol.AppendPresence(nil, group, event, member)
}

// deliver hands a join or leave event of m to the local members that
// asked for events, except m itself; those that fold by user get it only
// at an edge (the user's first connection joined, or its last left). The
// frame is encoded once, and only when someone is listening. p.mu is held.
func (g *pgroup) deliver(event string, m Member, edge bool) {
	var frame []byte
	for ch, l := range g.listeners {
		if ch != m.Channel && (edge || l.events != UserEvents) {
			if frame == nil {
				frame = eventFrame(g.name, event, m)
			}
			l.recv.Receive(frame)
		}
	}
}

// loop handles heartbeats, events and queries, sends this node's
// heartbeats and drops nodes that went quiet, until close.
func (p *Manager) loop() {
	defer p.wg.Done()
	beat := time.NewTicker(p.interval)
	defer beat.Stop()
	check := time.NewTicker(p.interval / 4)
	defer check.Stop()
	p.heartbeat(false)
	for {
		select {
		case <-p.stop:
			return
		case <-beat.C:
			p.heartbeat(false)
		case <-p.heartbeatNow:
			p.heartbeat(false)
		case now := <-check.C:
			p.expire(now)
		case msg := <-p.in:
			p.handle(msg)
		}
	}
}

// heartbeat publishes the node's presence groups. It holds p.mu while
// publishing, as joins and leaves do their events: otherwise a heartbeat
// listed before a join could be published after the join's event, and
// its receivers would take the group's absence from it for the member's
// leave.
func (p *Manager) heartbeat(bye bool) {
	hb := heartbeat{Node: p.cfg.Node, Region: p.cfg.Region, Bye: bye, Groups: []string{}}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !bye {
		for name := range p.groups {
			hb.Groups = append(hb.Groups, name)
		}
	}
	for _, data := range splitHeartbeat(hb, int(p.bus.MaxPayload())) {
		p.publish(p.prefix+"nodes", data)
	}
}

// splitHeartbeat encodes hb in as few messages of at most max bytes as
// hold its groups (group names are short: MaxGroupLen).
func splitHeartbeat(hb heartbeat, max int) [][]byte {
	data, _ := json.Marshal(hb)
	if len(data) <= max {
		return [][]byte{data}
	}
	head, _ := json.Marshal(heartbeat{Node: hb.Node, Region: hb.Region, Groups: []string{}, Part: 1 << 20, Parts: 1 << 20})
	budget := max - len(head)
	var lists [][]string
	var list []string
	size := 0
	for _, g := range hb.Groups {
		if size+len(g)+3 > budget && len(list) > 0 {
			lists, list, size = append(lists, list), nil, 0
		}
		list, size = append(list, g), size+len(g)+3 // quotes and a comma
	}
	lists = append(lists, list)
	out := make([][]byte, len(lists))
	for i, l := range lists {
		out[i], _ = json.Marshal(heartbeat{Node: hb.Node, Region: hb.Region, Groups: l, Part: i, Parts: len(lists)})
	}
	return out
}

func (p *Manager) handle(msg *nats.Msg) {
	switch {
	case msg.Sub == p.nodes:
		var hb heartbeat
		if json.Unmarshal(msg.Data, &hb) != nil || !p.cfg.ValidNode(hb.Node) || hb.Node == p.cfg.Node {
			return
		}
		p.onHeartbeat(&hb)
	case strings.HasPrefix(msg.Subject, p.prefix+"events."):
		group := msg.Subject[len(p.prefix)+len("events."):]
		var ev presenceEvent
		if json.Unmarshal(msg.Data, &ev) != nil || !p.cfg.ValidNode(ev.Node) || ev.Node == p.cfg.Node || !p.cfg.ValidChannel(ev.Member.Channel) {
			return
		}
		p.onEvent(group, &ev)
	case strings.HasPrefix(msg.Subject, p.prefix+"query."):
		if msg.Reply == "" {
			return
		}
		group := msg.Subject[len(p.prefix)+len("query."):]
		var req presenceRequest
		if json.Unmarshal(msg.Data, &req) != nil {
			return
		}
		p.publish(msg.Reply, encodeReply(p.answer(group, req), int(p.bus.MaxPayload())))
	}
}

func (p *Manager) onHeartbeat(hb *heartbeat) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if hb.Bye {
		delete(p.parts, hb.Node)
		p.dropLocked(hb.Node)
		return
	}
	prev := p.peers[hb.Node]
	if hb.Parts > 1 {
		if prev != nil {
			prev.seen = time.Now() // alive, whatever the rest says
		}
		acc := p.parts[hb.Node]
		if hb.Part == 0 {
			acc = &heartbeatParts{}
			p.parts[hb.Node] = acc
		}
		if acc == nil || hb.Part != acc.next {
			delete(p.parts, hb.Node) // a part went missing: wait for the next round
			return
		}
		acc.next++
		acc.groups = append(acc.groups, hb.Groups...)
		if acc.next < hb.Parts {
			return
		}
		delete(p.parts, hb.Node)
		hb.Groups = acc.groups
	}
	if prev == nil {
		p.log.Debug("presence: node seen", "peer", hb.Node, "groups", len(hb.Groups))
	}
	groups := make(map[string]bool, len(hb.Groups))
	unsynced := make(map[string]bool)
	for _, name := range hb.Groups {
		groups[name] = true
		g := p.groups[name]
		if g == nil {
			continue
		}
		// A node seen anew (started, or back from a partition), one whose
		// members could not be fetched yet, or one listing a group whose
		// members we never heard of: fetch them.
		if prev == nil || prev.unsynced[name] || (!prev.groups[name] && len(g.remote[hb.Node]) == 0) {
			unsynced[name] = true
			p.queueSyncLocked(syncTask{group: name})
		}
	}
	if prev != nil {
		// Groups it no longer lists: its members there are gone, even if
		// the leave events were lost.
		for name := range prev.groups {
			if g := p.groups[name]; g != nil && !groups[name] {
				g.dropNode(p, hb.Node)
			}
		}
	}
	p.peers[hb.Node] = &peer{seen: time.Now(), groups: groups, unsynced: unsynced}
}

func (p *Manager) onEvent(group string, ev *presenceEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.groups[group]
	if g == nil {
		return
	}
	if pr := p.peers[ev.Node]; pr == nil {
		// Not heard from yet: track it, so that it expires if it dies.
		p.peers[ev.Node] = &peer{seen: time.Now(), groups: map[string]bool{group: true}, unsynced: map[string]bool{}}
	} else {
		pr.groups[group] = true
	}
	switch ev.Event {
	case "join":
		g.addRemote(group, ev.Node, ev.Member)
	case "leave":
		g.gen++
		if g.syncing {
			g.gone[ev.Member.Channel] = g.gen
		}
		g.removeRemote(group, ev.Node, ev.Member.Channel)
	}
}

func (g *pgroup) addRemote(group, node string, m Member) {
	ms := g.remote[node]
	if ms == nil {
		ms = make(map[string]remote)
		g.remote[node] = ms
	}
	if _, ok := ms[m.Channel]; ok {
		return
	}
	g.gen++
	ms[m.Channel] = remote{m: m, gen: g.gen}
	g.deliver("join", m, g.count(m, 1))
}

func (g *pgroup) removeRemote(group, node, channel string) {
	r, ok := g.remote[node][channel]
	if !ok {
		return
	}
	delete(g.remote[node], channel)
	if len(g.remote[node]) == 0 {
		delete(g.remote, node)
	}
	g.deliver("leave", r.m, g.count(r.m, -1))
}

// dropNode forgets a node's members of g, with leave events.
func (g *pgroup) dropNode(_ *Manager, node string) {
	for ch := range g.remote[node] {
		g.removeRemote(g.name, node, ch)
	}
}

// dropLocked forgets a node altogether. p.mu is held.
func (p *Manager) dropLocked(node string) {
	delete(p.peers, node)
	delete(p.parts, node)
	for _, g := range p.groups {
		g.dropNode(p, node)
	}
}

// expire drops the nodes whose heartbeats stopped.
func (p *Manager) expire(now time.Time) {
	limit := MissedBeats * p.interval
	p.mu.Lock()
	defer p.mu.Unlock()
	for node, pr := range p.peers {
		if now.Sub(pr.seen) > limit {
			p.log.Info("presence: node gone quiet; its members are dropped", "peer", node)
			p.dropLocked(node)
		}
	}
}

// answer is this node's reply to a query for group.
func (p *Manager) answer(group string, req presenceRequest) presenceReply {
	r := presenceReply{Node: p.cfg.Node}
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.groups[group]
	if g == nil {
		return r
	}
	limit := min(max(req.Limit, 0), maxSyncMembers)
	if req.ByUser {
		r.Count = len(g.localUsers) + g.anonymous
		if limit > 0 {
			r.Members = g.localByUser(limit)
			r.Truncated = len(r.Members) < r.Count
		}
		return r
	}
	r.Count = len(g.local)
	if limit > 0 {
		r.Members = g.localMembers(limit)
		r.Truncated = len(r.Members) < r.Count
	}
	return r
}

// encodeReply encodes r in at most max bytes, listing fewer members
// (Truncated) when all of them do not fit.
func encodeReply(r presenceReply, max int) []byte {
	for {
		data, _ := json.Marshal(r)
		if len(data) <= max || len(r.Members) == 0 {
			return data
		}
		r.Members, r.Truncated = r.Members[:len(r.Members)/2], true
	}
}

// localMembers returns up to limit (-1: all) local members, sorted.
func (g *pgroup) localMembers(limit int) []Member {
	n := len(g.local)
	if limit >= 0 {
		n = min(n, limit)
	}
	out := make([]Member, 0, n)
	for _, l := range g.local {
		if len(out) == n {
			break
		}
		out = append(out, l.m)
	}
	sortMembers(out)
	return out
}

func sortMembers(ms []Member) {
	slices.SortFunc(ms, func(a, b Member) int {
		return cmp.Or(cmp.Compare(a.User, b.User), cmp.Compare(a.Channel, b.Channel))
	})
}

// foldByUser folds members of one user into one entry, counting its
// channels; anonymous members stay one entry each.
func foldByUser(ms []Member) []Member {
	byUser := make(map[string]int)
	out := ms[:0:0]
	for _, m := range ms {
		n := max(m.Channels, 1)
		if m.User == "" {
			m.Channels = n
			out = append(out, m)
			continue
		}
		if i, ok := byUser[m.User]; ok {
			out[i].Channels += n
			out[i].Channel = min(out[i].Channel, m.Channel)
			continue
		}
		m.Channels = n
		byUser[m.User] = len(out)
		out = append(out, m)
	}
	sortMembers(out)
	return out
}

// Get answers who is in group, across every node: this node answers for
// itself, and the nodes whose heartbeats list the group answer within
// Config.Timeout (or ctx's deadline, if sooner). The caller has checked
// that q.Limit is 0 to MaxLimit. An error is the bus's.
func (p *Manager) Get(ctx context.Context, group string, q Query) (Result, error) {
	req := presenceRequest{Limit: q.Limit, ByUser: q.ByUser}
	replies, partial, err := p.gather(ctx, group, req, false)
	if err != nil {
		return Result{}, err
	}
	var out Result
	out.Partial = partial
	var all []Member
	overflow := 0
	for _, r := range replies {
		out.Count += r.Count
		all = append(all, r.Members...)
		if q.ByUser {
			overflow += r.Count - len(r.Members)
		}
	}
	if q.ByUser {
		all = foldByUser(all)
		out.Count = len(all) + overflow
	} else {
		sortMembers(all)
	}
	out.Members = all[:min(len(all), q.Limit)]
	if out.Members == nil {
		out.Members = []Member{}
	}
	return out, nil
}

// gather collects the replies to req from this node and the others known
// to have members of group; with all, from every node that answers within
// the timeout. A node that answers with members is known from then on.
func (p *Manager) gather(ctx context.Context, group string, req presenceRequest, all bool) ([]presenceReply, bool, error) {
	replies := []presenceReply{p.answer(group, req)}
	self := p.cfg.Node
	p.mu.Lock()
	waiting := make(map[string]bool)
	for node, pr := range p.peers {
		if pr.groups[group] {
			waiting[node] = true
		}
	}
	p.mu.Unlock()
	if len(waiting) == 0 && !all {
		return replies, false, nil
	}
	if err := p.cfg.Ready(); err != nil {
		return replies, true, nil // this node's view only
	}
	inbox := p.bus.NewRespInbox()
	ch := make(chan *nats.Msg, len(waiting)+16)
	sub, err := p.bus.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, false, err
	}
	defer sub.Unsubscribe()
	data, _ := json.Marshal(req)
	if err := p.bus.PublishRequest(p.prefix+"query."+group, inbox, data); err != nil {
		return nil, false, err
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	seen := map[string]bool{self: true}
	for len(waiting) > 0 || all {
		select {
		case msg := <-ch:
			var r presenceReply
			if json.Unmarshal(msg.Data, &r) != nil || !p.cfg.ValidNode(r.Node) || seen[r.Node] {
				continue
			}
			seen[r.Node] = true
			expected := waiting[r.Node]
			delete(waiting, r.Node)
			replies = append(replies, r)
			if !expected && r.Count > 0 {
				p.learn(r.Node, group)
			}
		case <-ctx.Done():
			return replies, len(waiting) > 0, nil
		}
	}
	return replies, false, nil
}

// learn records that node has members of group, as its next heartbeat
// will say.
func (p *Manager) learn(node, group string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pr := p.peers[node]; pr != nil {
		pr.groups[group] = true
	} else {
		p.peers[node] = &peer{seen: time.Now(), groups: map[string]bool{group: true}, unsynced: map[string]bool{}}
	}
}

func (p *Manager) queueSync(t syncTask) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.queueSyncLocked(t)
}

func (p *Manager) queueSyncLocked(t syncTask) {
	if p.pending[t.group] || p.closed {
		return
	}
	select {
	case p.syncs <- t:
		p.pending[t.group] = true
	default:
		p.log.Warn("presence: too many groups waiting for a resync; one skipped", "group", t.group)
	}
}

// syncLoop refetches the members of groups from the other nodes, one
// group at a time, until close.
func (p *Manager) syncLoop() {
	defer p.wg.Done()
	for {
		select {
		case <-p.stop:
			return
		case t := <-p.syncs:
			p.sync(t)
		}
	}
}

// sync reconciles this node's view of the other nodes' members of group
// with their answers, sending join and leave events for the differences.
func (p *Manager) sync(t syncTask) {
	group := t.group
	p.mu.Lock()
	delete(p.pending, group)
	g := p.groups[group]
	var start uint64
	if g != nil {
		start = g.gen
		g.syncing = true
	}
	p.mu.Unlock()
	if g == nil {
		return
	}
	defer func() {
		p.mu.Lock()
		g.syncing = false
		clear(g.gone)
		p.mu.Unlock()
	}()
	ctx, cancel := context.WithCancel(context.Background())
	p.wg.Add(1)
	go func() { // the wait ends at close too
		defer p.wg.Done()
		select {
		case <-p.stop:
		case <-ctx.Done():
		}
		cancel()
	}()
	replies, partial, err := p.gather(ctx, group, presenceRequest{Limit: maxSyncMembers}, t.full)
	cancel()
	p.log.Debug("presence: resync", "group", group, "full", t.full, "answers", len(replies), "partial", partial, "error", err)
	if err != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.groups[group] != g {
		return
	}
	for _, r := range replies {
		pr := p.peers[r.Node]
		if r.Node == p.cfg.Node || pr == nil {
			continue
		}
		delete(pr.unsynced, group)
		got := make(map[string]bool, len(r.Members))
		for _, m := range r.Members {
			got[m.Channel] = true
			if gen, left := g.gone[m.Channel]; left && gen > start {
				continue // left while the answer was on its way
			}
			g.addRemote(group, r.Node, m)
		}
		if r.Truncated {
			continue
		}
		for ch, rm := range g.remote[r.Node] {
			if !got[ch] && rm.gen <= start {
				g.removeRemote(group, r.Node, ch)
			}
		}
	}
}

// Close says goodbye to the other nodes and stops the goroutines.
func (p *Manager) Close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.heartbeat(true)
	close(p.stop)
	p.wg.Wait()
	p.nodes.Unsubscribe()
}
