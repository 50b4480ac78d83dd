import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle

/// What a reconnecting client should say about its link, as a pure value: one line when
/// the link is first lost or unreachable, one when it is back, nothing while it keeps
/// failing (a peer that is down for a minute must not fill the log).
public struct LinkHealth: Sendable, Equatable {
    public enum Report: Sendable, Equatable { case unreachable, lost, reconnected }

    private var down = false

    public init() {}

    /// The link is up (after connecting and any handshake).
    public mutating func connected() -> Report? {
        defer { down = false }
        return down ? .reconnected : nil
    }

    /// A connection attempt (or its handshake) failed.
    public mutating func failed() -> Report? {
        defer { down = true }
        return down ? nil : .unreachable
    }

    /// An established link closed while the service still runs.
    public mutating func lost() -> Report? {
        down = true
        return .lost
    }
}

/// The one reconnect loop of the internal clients (Redis commands, Redis pub/sub, the
/// coordinator link): connect, let the caller finish its handshake, wait for the link to
/// close, back off with jitter, again, until the service is cancelled or shuts down.
public struct Reconnector: Sendable {
    public let what: String
    /// Where it connects, as the logs name it.
    public let place: String
    public let logger: Logger
    public let base: Double
    public let cap: Double
    /// The live channel, nil while there is none (callers fail fast on nil).
    public let current: NIOLockedValueBox<Channel?>

    public init(what: String, endpoint: Endpoint, logger: Logger, base: Double, cap: Double, current: NIOLockedValueBox<Channel?>) {
        self.init(what: what, place: endpoint.description, logger: logger, base: base, cap: cap, current: current)
    }

    public init(what: String, place: String, logger: Logger, base: Double, cap: Double, current: NIOLockedValueBox<Channel?>) {
        self.what = what
        self.place = place
        self.logger = logger
        self.base = base
        self.cap = cap
        self.current = current
    }

    /// Runs until cancelled or shut down. `connect` opens the channel; `established` runs with
    /// it already published in `current` (AUTH, hello, SUBSCRIBE: throw to drop the link);
    /// `ended` runs after every link that closed or failed to come up.
    public func run(connect: @Sendable () async throws -> Channel,
                    established: @Sendable (Channel) async throws -> Void,
                    ended: @Sendable () -> Void = {}) async {
        var backoff = Backoff(base: base, cap: cap)
        var health = LinkHealth()
        await withTaskCancellationOrGracefulShutdownHandler {
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                do {
                    let ch = try await connect()
                    current.withLockedValue { $0 = ch }
                    // Cancelled while connecting: the handler found no channel to close.
                    if Task.isCancelled || Task.isShuttingDownGracefully {
                        ch.close(promise: nil)
                        current.withLockedValue { $0 = nil }
                        break
                    }
                    do {
                        try await established(ch)
                    } catch {
                        ch.close(promise: nil)
                        throw error
                    }
                    report(health.connected(), error: nil)
                    backoff.reset()
                    try? await ch.closeFuture.get()
                    current.withLockedValue { $0 = nil }
                    ended()
                    if !Task.isCancelled && !Task.isShuttingDownGracefully { report(health.lost(), error: nil) }
                } catch {
                    current.withLockedValue { $0 = nil }
                    ended()
                    report(health.failed(), error: error)
                }
                if !(await backoff.sleep()) { break }
            }
        } onCancelOrGracefulShutdown: {
            current.withLockedValue { $0 }?.close(promise: nil)
        }
        current.withLockedValue { $0 }?.close(promise: nil)
    }

    private func report(_ r: LinkHealth.Report?, error: Error?) {
        switch r {
        case .unreachable?:
            logger.warning("\(what) unreachable", metadata: [what: "\(place)", "error": "\(error.map { "\($0)" } ?? "")"])
        case .lost?:
            logger.warning("\(what) connection lost", metadata: [what: "\(place)"])
        case .reconnected?:
            Telemetry.linkReconnects(what).increment()
            logger.info("\(what) reconnected", metadata: [what: "\(place)"])
        case nil:
            break
        }
    }
}
