import ChatCore
import NIOConcurrencyHelpers
import NIOCore
import NIOWebSocket
import Proto

/// The worker's local connections and its fan-out: one Redis subscription for
/// the worker, each message encoded once and handed to every connection on
/// its own event loop.
///
/// While the subscription is down (and until the gap is filled from the room
/// stream after it comes back) live messages wait here, so connections see
/// every message once and in id order.
final class Hub: Sendable {
    struct Entry: Sendable {
        let info: ConnectionInfo
        let sessionHash: String
        let handler: NIOLoopBound<ChatConnectionHandler>
        let eventLoop: EventLoop
    }

    private struct Relay {
        var lastRelayed: MessageID?
        var filling = true
        var waiting: [ChatMessage] = []
        /// Who clients were last told is online (for diffs against coordinator snapshots).
        var knownOnline: Set<String> = []
        /// Bumped at every subscription loss; a gap fill from an older one is void.
        var epoch = 0
    }

    /// The connections of one event loop, touched only on that loop: a broadcast is
    /// one task per loop that walks its connections, not one task per connection.
    private struct LoopConnections: Sendable {
        let eventLoop: EventLoop
        let handlers: NIOLoopBoundBox<LoopHandlers>
    }

    final class LoopHandlers {
        var byID: [String: ChatConnectionHandler] = [:]
    }

    private let entries = NIOLockedValueBox<[String: Entry]>([:])
    private let loops: [ObjectIdentifier: LoopConnections]
    private let relay = NIOLockedValueBox(Relay())
    private let drained = NIOLockedValueBox<Set<String>>([])
    private let maxWaiting: Int

    init(group: EventLoopGroup, maxWaiting: Int = 100_000) {
        var loops: [ObjectIdentifier: LoopConnections] = [:]
        for loop in group.makeIterator() {
            loops[ObjectIdentifier(loop)] = LoopConnections(eventLoop: loop, handlers: .makeBoxSendingValue(LoopHandlers(), eventLoop: loop))
        }
        self.loops = loops
        self.maxWaiting = maxWaiting
    }

    /// Called on the connection's event loop.
    func add(_ entry: Entry) {
        entries.withLockedValue { $0[entry.info.id] = entry }
        loops[ObjectIdentifier(entry.eventLoop)]?.handlers.value.byID[entry.info.id] = entry.handler.value
    }

    /// Called on the connection's event loop.
    func remove(_ id: String, eventLoop: EventLoop) {
        _ = entries.withLockedValue { $0.removeValue(forKey: id) }
        loops[ObjectIdentifier(eventLoop)]?.handlers.value.byID.removeValue(forKey: id)
    }

    var connections: [ConnectionInfo] { entries.withLockedValue { $0.values.map(\.info) } }
    var count: Int { entries.withLockedValue { $0.count } }
    var localUsers: [String] { Array(Set(connections.map(\.user))).sorted() }

    /// Without the coordinator: who this worker last knew to be online, plus its own users.
    var bestKnownOnline: [String] {
        let known = relay.withLockedValue { $0.knownOnline }
        return Array(known.union(localUsers)).sorted()
    }

    private func forEach(where predicate: (Entry) -> Bool = { _ in true }, _ body: @escaping @Sendable (ChatConnectionHandler) -> Void) {
        let targets = entries.withLockedValue { $0.values.filter(predicate) }
        for t in targets {
            let handler = t.handler
            t.eventLoop.execute { body(handler.value) }
        }
    }

    /// A message published on a room's channel. Fan-out happens under the relay
    /// lock so that a gap fill and live relay can never interleave out of order.
    func deliver(_ message: ChatMessage) {
        relay.withLockedValue { r in
            if r.filling {
                if r.waiting.count < maxWaiting { r.waiting.append(message) }
                return
            }
            if let last = r.lastRelayed, message.id <= last { return }
            r.lastRelayed = message.id
            fanOut(message)
        }
    }

    private func fanOut(_ message: ChatMessage) {
        let frame = SharedFrame(message: message)
        broadcast { $0.deliverLive(frame) }
    }

    /// Runs `body` for every connection, one task per event loop.
    private func broadcast(_ body: @escaping @Sendable (ChatConnectionHandler) -> Void) {
        for l in loops.values {
            let handlers = l.handlers
            l.eventLoop.execute {
                for h in handlers.value.byID.values { body(h) }
            }
        }
    }

    /// The subscription is gone: hold live messages until the gap is filled.
    func subscriptionLost() {
        relay.withLockedValue {
            $0.filling = true
            $0.epoch += 1
        }
    }

    /// Where a gap fill starts (the last id relayed, nil before the first subscription) and its epoch.
    var gapFillStart: (after: MessageID?, epoch: Int) { relay.withLockedValue { ($0.lastRelayed, $0.epoch) } }

    /// Relays the messages missed while unsubscribed (in order), then what waited, and goes live.
    /// `initial` (the first subscription) relays nothing older than `startingAfter`.
    /// Returns false when the subscription was lost again meanwhile (nothing is relayed then).
    @discardableResult
    func finishGapFill(missed: [ChatMessage], startingAfter start: MessageID?, epoch: Int) -> Bool {
        relay.withLockedValue { r -> Bool in
            guard r.epoch == epoch else { return false }
            if r.lastRelayed == nil { r.lastRelayed = start }
            for m in missed + r.waiting where r.lastRelayed.map({ m.id > $0 }) ?? true {
                r.lastRelayed = m.id
                fanOut(m)
            }
            r.waiting = []
            r.filling = false
            return true
        }
    }

    // MARK: presence

    func presence(user: String, online: Bool) {
        relay.withLockedValue { r in
            if online { r.knownOnline.insert(user) } else { r.knownOnline.remove(user) }
        }
        sendPresence(user: user, online: online)
    }

    /// The coordinator's authoritative list (after it restarted): tell clients what changed.
    func presenceSnapshot(_ online: [String]) {
        let now = Set(online)
        let (gone, came) = relay.withLockedValue { r -> (Set<String>, Set<String>) in
            defer { r.knownOnline = now }
            return (r.knownOnline.subtracting(now), now.subtracting(r.knownOnline))
        }
        for u in gone.sorted() { sendPresence(user: u, online: false) }
        for u in came.sorted() { sendPresence(user: u, online: true) }
    }

    private func sendPresence(user: String, online: Bool) {
        let json = ServerFrame.presence(user: user, online: online).json
        broadcast { $0.sendEvent(json) }
    }

    func closeSessions(hash: String, code: UInt16) {
        forEach(where: { $0.sessionHash == hash }) { $0.closeWith(code: code) }
    }

    /// Closes up to `limit` connections not yet asked to close; returns how many it asked.
    func closeSome(code: UInt16, limit: Int) -> Int {
        let asked = drained.withLockedValue { $0 }
        let targets = entries.withLockedValue { e in Array(e.values.filter { !asked.contains($0.info.id) }.prefix(limit)) }
        drained.withLockedValue { d in for t in targets { d.insert(t.info.id) } }
        for t in targets {
            let handler = t.handler
            t.eventLoop.execute { handler.value.closeWith(code: code) }
        }
        return targets.count
    }
}

/// A message frame encoded once and shared by every receiver: the JSON bytes and the
/// WebSocket frame around them (copies share its storage, so a receiver allocates nothing).
struct SharedFrame: Sendable {
    let message: ChatMessage
    let frame: WebSocketFrame

    init(message: ChatMessage) {
        self.message = message
        self.frame = WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: message.json))
    }
}
