import NIOCore

/// The kinds of global rate limit the coordinator enforces.
public enum RateLimitKind: String, Codable, Sendable, CaseIterable {
    /// Chat messages per user, across all connections.
    case message
    /// Failed logins per user name from one client address (key `name|address`).
    case loginUser
    /// Failed logins per user name from all addresses: softer, so that nobody can keep a
    /// person out from a few addresses.
    case loginName
    /// Failed logins per client address.
    case loginAddress
    /// `sync` requests per user (each replays history from Redis).
    case sync
    /// Room requests per user: membership changes, queries, read markers, typing.
    case request
}

/// One live WebSocket connection as a worker reports it.
public struct ConnectionInfo: Codable, Hashable, Sendable {
    public var id: String
    public var user: String
    public init(id: String, user: String) {
        self.id = id
        self.user = user
    }
}

/// A worker as gateways see it.
public struct WorkerInfo: Codable, Hashable, Sendable {
    public var id: String
    public var address: String
    public var load: Int
    public init(id: String, address: String, load: Int) {
        self.id = id
        self.address = address
        self.load = load
    }
}

/// A request to the coordinator (from a worker or a gateway).
public enum CoordinatorRequest: Codable, Equatable, Sendable {
    /// First frame of every link when a cluster secret is configured: the client's fresh
    /// nonce. The coordinator answers `authChallenge` with its own nonce and its proof.
    case authBegin(nonce: [UInt8])
    /// The client's proof over both nonces; answered `ok`, or `denied` and the link closed.
    /// The secret itself never crosses the link.
    case authFinish(proof: [UInt8])
    /// A worker announces itself with every connection it holds (also after a coordinator restart).
    case register(worker: String, address: String, connections: [ConnectionInfo])
    /// A worker renews its lease.
    case heartbeat(worker: String, connectionCount: Int)
    /// A worker stops taking new streams (drain) or leaves.
    case unregister(worker: String)
    case connectionOpened(worker: String, connection: ConnectionInfo)
    case connectionClosed(worker: String, connection: ConnectionInfo)
    /// A gateway asks which worker takes a new stream; `exclude` lists workers that just failed.
    case route(exclude: [String])
    /// Checks (and when `consume` is true, spends) one cell of a limit.
    case rateCheck(kind: RateLimitKind, key: String, consume: Bool)
    /// Gives back one cell spent by a `rateCheck` (answered `ok`).
    case rateRefund(kind: RateLimitKind, key: String)
    /// Live workers and online users, for health checks.
    case status
    /// Every routable worker, for gateways to route on their own while the coordinator is away.
    case listWorkers
    /// Asked after the handshake and then every half second: is this coordinator the active
    /// one, and under which epoch? Answered `leader` or `standby`.
    case hello
}

/// The coordinator's answer to one request.
public enum CoordinatorResponse: Codable, Equatable, Sendable {
    case ok
    /// The worker is not (or no longer) registered; it should register again.
    case unknownWorker
    case denied
    /// The connection was counted; `online` is every user online now.
    case opened(online: [String])
    case route(worker: String, address: String)
    case noWorker
    case rate(allowed: Bool, retryAfterMs: Int)
    /// The coordinator's nonce and its proof that it holds the secret.
    case authChallenge(nonce: [UInt8], proof: [UInt8])
    case status(workers: Int, online: Int)
    case workers([WorkerInfo])
    case failure(String)
    /// This coordinator is the active one, under `epoch` (the fencing token: it grows with
    /// every takeover; 0 for a coordinator that runs without an election).
    case leader(epoch: UInt64)
    /// This coordinator is a standby (or has just lost its lease): it answers nothing else and
    /// closes the link. Clients try the next coordinator.
    case standby
}

/// What travels on a coordinator link.
public enum CoordinatorFrame: Codable, Equatable, Sendable {
    case request(id: UInt64, CoordinatorRequest)
    case response(id: UInt64, CoordinatorResponse)
    /// Pushed to every registered worker: a user's first connection opened or last closed.
    case presence(user: String, online: Bool)
    /// Pushed once the coordinator's view is complete again (after its start, and to a worker
    /// that registers later): every user online. Workers tell their clients what changed.
    case presenceSnapshot(online: [String])
}
