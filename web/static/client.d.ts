// Type declarations for /client.js, groupcast's browser client.

/** A JSON value, as published and delivered. */
export type JSONValue = string | number | boolean | null | JSONValue[] | { [key: string]: JSONValue };

/** The client's connection state. */
export type State = "connecting" | "connected" | "reconnecting" | "closed";

/** The server's first frame on every connection. */
export interface Welcome {
  type: "welcome";
  /** This connection's channel: POST /api/channels/{channel}/messages reaches it alone. Changes on every reconnection. */
  channel: string;
  /** The server instance's id. */
  node: string;
  /** The instance's region ("" when it has none). */
  region: string;
  /** The user id (sub) of the connection's token, when the server requires tokens. */
  user?: string;
  [field: string]: unknown;
}

/** One delivery. Unknown fields may be present. */
export interface Message<T = JSONValue> {
  type: "message";
  /** The group it was published to (absent for a message to this connection alone). */
  group?: string;
  /** This connection's channel, for a message sent to it alone. */
  channel?: string;
  /** The region it was published in, when known. */
  region?: string;
  /** The published JSON value. */
  data: T;
  [field: string]: unknown;
}

/** Receives a group's deliveries. */
export type Handler<T = JSONValue> = (data: T, msg: Message<T>) => void;

export interface JoinOptions {
  /** A per-group token for a group the connection's token does not cover; a function is called for each join and rejoin. */
  token?: string | (() => string | Promise<string>);
  /** Receive "presence" events (joins and leaves) for the group, where the server tracks presence. */
  presence?: boolean;
  /** With presence: "user" hears only a user's first join and last leave. */
  by?: "user";
}

/** One connection (or, folded by user, one user) present in a group. */
export interface Member {
  channel: string;
  user?: string;
  region?: string;
  info?: JSONValue;
  /** Folded by user: how many connections the user has in the group. */
  channels?: number;
}

/** A presence join or leave. */
export interface PresenceEvent {
  type: "presence";
  group: string;
  event: "join" | "leave";
  member: Member;
}

export interface Options {
  /** The connection token (a JWT), sent as ?token= on every connection. */
  token?: string;
  /**
   * Called for a fresh connection token before every connection, and before the
   * token's exp to refresh it on the open socket; takes precedence over token.
   */
  getToken?: () => string | Promise<string>;
  /** First reconnection wait in ms; doubles up to maxDelay, each wait between half and all of it. Default 250. */
  minDelay?: number;
  /** Longest reconnection wait in ms. Default 10000. */
  maxDelay?: number;
  /** How long a request waits for its answer, in ms. Default 10000. */
  timeout?: number;
  /** How often the connection is pinged, in ms; a missing pong drops it. Default 25000. */
  pingInterval?: number;
  /**
   * The transports to try, in order, until one opens; the one that opens is kept for the
   * page's life. Default ["websocket", "sse"]: Server-Sent Events where the upgrade is refused.
   */
  transports?: Transport[];
  /** How long a transport may take to open before the next one is tried, in ms. Default 3000. */
  openTimeout?: number;
}

/** How the client reaches the server: a WebSocket on /ws, or Server-Sent Events on /sse with POSTs. */
export type Transport = "websocket" | "sse";

/**
 * An error from the server (code: its stable error code, such as
 * "invalid_group", "forbidden", "unauthorized", "too_many_groups", "rate_limited",
 * "unavailable") or from
 * the client ("disconnected", "timeout", "closed", "token").
 */
export class GroupcastError extends Error {
  readonly code: string;
  constructor(code: string, message?: string);
}

export interface ClientEventMap {
  /** detail: the new state. */
  state: CustomEvent<State>;
  /**
   * Once, when the client ends for good (after the state "closed"): code 1000 when the page
   * called close(), or the server's terminal close code, 4003 (disconnected through the server
   * API, e.g. at logout), with its reason. The client does not reconnect; connect() again to.
   */
  closed: CustomEvent<{ code: number; reason: string }>;
  /** detail: each connection's welcome. */
  welcome: CustomEvent<Welcome>;
  /** detail: every delivery. */
  message: CustomEvent<Message>;
  /** detail: errors no request gets (a group that could not be rejoined, a stray error frame). */
  error: CustomEvent<GroupcastError>;
  /** detail: a join or leave in a group joined with presence: true. */
  presence: CustomEvent<PresenceEvent>;
  /** detail: the server added this connection to a group. */
  joined: CustomEvent<{ type: "joined"; group: string }>;
  /** detail: the server removed this connection from a group. */
  left: CustomEvent<{ type: "left"; group: string }>;
  /** detail: a recoverable group's history was reset or may have lost messages (a gap frame, with its epoch, or a rejoin answered `recovered: false`): reload its state. */
  gap: CustomEvent<{ type: "gap"; group: string; epoch?: string; recovered?: false }>;
}

export class Client extends EventTarget {
  constructor(url?: string, options?: Options);
  /** The ws(s) URL it connects to. */
  readonly url: string;
  readonly state: State;
  /** The current connection's welcome, null before the first. */
  readonly welcome: Welcome | null;
  /** The transport of the last connection that opened, null before the first. */
  readonly transport: Transport | null;
  /** The groups joined, rejoined after every reconnection. */
  readonly groups: Set<string>;

  /** Joins a group; resolves on the server's ack. Retried on the next connection if the socket drops first. */
  join<T = JSONValue>(group: string, handler?: Handler<T>, options?: JoinOptions): Promise<void>;
  /** Who is in a group (presence must be on for it on the server). */
  presence(group: string, options?: { limit?: number; by?: "user"; countOnly?: boolean }): Promise<{ count: number; members: Member[]; partial: boolean }>;
  /** Leaves a group; its handler gets nothing more. */
  leave(group: string): Promise<void>;
  /** Publishes a JSON value to a group (when the server lets clients send). Not retried. */
  send(group: string, data: JSONValue): Promise<void>;
  /** A round trip through the server; resolves with its time in ms. */
  ping(): Promise<number>;
  /** Sends a frame of an application-defined type; resolves with its reply's data. */
  call(type: string, fields?: { [key: string]: JSONValue }): Promise<JSONValue>;
  /** Sets the handler of messages sent to this connection alone. */
  onDirect(handler: Handler | null): void;
  /** Resolves once connected; rejects if closed first. */
  ready(): Promise<void>;
  /** Closes the connection (1000) and stops reconnecting. */
  close(): void;

  addEventListener<K extends keyof ClientEventMap>(
    type: K,
    listener: (ev: ClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof ClientEventMap>(
    type: K,
    listener: (ev: ClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

/**
 * Opens a client. url defaults to this page's origin, path /ws; "/ws" and
 * http(s) URLs are turned into ws(s) ones.
 */
export function connect(url?: string, options?: Options): Client;
