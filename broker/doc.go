// Package broker is groupcast's channel layer: channels, groups and
// fan-out over NATS, in Django Channels' vocabulary (NewChannel, Send,
// GroupAdd, GroupDiscard, GroupSend). It knows nothing of HTTP.
//
// # Connection
//
// With Config.URL empty, New starts an embedded nats-server in this
// process (no TCP listener unless Config.ListenAddr asks for one, no signal
// handlers, logs through slog) and connects to it in-process. That is a
// complete single-instance setup. With Config.URL set, the broker is a
// client of an external NATS cluster: it reconnects forever with jittered
// backoff and nats.go restores its subscriptions. Everything above the
// connection is the same code.
//
// # Subjects (a public interface)
//
// Any NATS client may publish into groupcast. With the default prefix
// "groupcast" (Config.Prefix):
//
//	groupcast.group.<group>             one message to every member of <group>
//	groupcast.direct.<node>.<conn>      one message to the channel "<node>.<conn>"
//	groupcast.command.<node>            a command to one node (Config.OnCommand)
//	groupcast.command.all               a command to every node
//	groupcast.presence.nodes            presence heartbeats (Config.Presence only)
//	groupcast.presence.events.<group>   presence join and leave events of <group>
//	groupcast.presence.query.<group>    presence requests, answered by nodes with members
//
// The payload is one JSON value, the data the members receive. Group names
// are 1–100 ASCII letters, digits, '-', '_' and '.', never starting or
// ending with '.' and never holding "..", so a group is always a literal
// subject and never a wildcard. A node subscribes once per group that has
// local members, and once (groupcast.direct.<node>.*) for all its channels.
//
// # Delivery guarantees
//
// In the manner of the Channels specification:
//
//   - At most once. A message is delivered to each member at most once,
//     or not at all: core NATS keeps no copy, so a node that is
//     disconnected, or a member whose outbox is full, misses messages.
//     Nothing is retried.
//   - Membership is live when GroupAdd returns: the node's subscription
//     has been confirmed by its NATS server, so a message published
//     through that server after that reaches the member. The cluster's
//     other servers learn of it one route hop later (under a millisecond
//     on a LAN), and other regions one gateway hop later (one inter-region
//     one-way latency), so a message published through them right after
//     the join may miss it.
//   - After GroupDiscard or CloseChannel returns, the channel receives no
//     more frames from the group.
//   - Order: messages from one publisher to one group arrive in the order
//     published (NATS keeps per-publisher order, and each group is fanned
//     out by one goroutine per node). Messages from different publishers
//     have no defined order between them.
//   - No duplicates: one subscription per node and group means one copy
//     per node, and one frame per member.
//
// # Kept groups
//
// Config.Policies make groups recoverable (a window of history) or latest
// (the newest message only). Their messages are stored in one JetStream
// stream per policy; the stream's sequence is the message's offset, and
// the stream's creation time its epoch. A node reads a kept group live
// through one ordered consumer per group; a join with Since replays what
// was missed with batched direct gets (no consumer, so no JetStream meta
// leader needed) and holds the live messages meanwhile, so the member gets
// every offset once, in order. With Config.HistoryRegion the streams live
// in that NATS cluster and nodes of every other cluster keep and read a
// mirror of each in their own (same offsets, same epoch): the history
// outlives the loss of its region, while publishing into kept groups
// waits for that region.
//
// # Fan-out
//
// Each node receives one copy of a group message, encodes the delivery
// frame once, and hands the same bytes to every local member's Receiver,
// which must not block: first to an ImmediateReceiver's ReceiveNow, which
// may write it at once on the fanning-out goroutine, else to Receive. A
// large group's members are shared out among the Broker's fan-out
// workers; messages of a group that queued up go out together. See
// fanout.go and dispatch.go.
package broker
