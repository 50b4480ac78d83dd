import ChatCore
import NIOConcurrencyHelpers
import NIOCore
import Proto

/// The worker's local streams and its fan-out: one Redis subscription for the worker,
/// each message encoded once and handed to every gateway link on its own event loop.
///
/// While the subscription is down (and until the gap is filled from the room
/// stream after it comes back) live messages wait here, so connections see
/// every message once and in id order.
final class Hub: Sendable {
    /// One client stream, for the questions asked across loops (registration, logout, drain).
    struct Entry: Sendable {
        let info: ConnectionInfo
        let sessionHash: String
        let stream: UInt32
        let link: NIOLoopBound<WorkerLinkHandler>
        let eventLoop: EventLoop
        /// Reported open to the coordinator (after its session check): only these are in
        /// a registration, so the coordinator never counts one it will not hear close.
        var reported = false
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

    /// The gateway links of one event loop, touched only on that loop: a broadcast is one
    /// task per loop that hands the message to each link there, which sends one frame.
    private struct LoopLinks: Sendable {
        let eventLoop: EventLoop
        let links: NIOLoopBoundBox<LinkSet>
    }

    final class LinkSet {
        var byID: [ObjectIdentifier: WorkerLinkHandler] = [:]
    }

    private let entries = NIOLockedValueBox<[String: Entry]>([:])
    private let loops: [ObjectIdentifier: LoopLinks]
    private let relay = NIOLockedValueBox(Relay())
    private let drained = NIOLockedValueBox<Set<String>>([])
    private let maxWaiting: Int

    init(group: EventLoopGroup, maxWaiting: Int = 100_000) {
        var loops: [ObjectIdentifier: LoopLinks] = [:]
        for loop in group.makeIterator() {
            loops[ObjectIdentifier(loop)] = LoopLinks(eventLoop: loop, links: .makeBoxSendingValue(LinkSet(), eventLoop: loop))
        }
        self.loops = loops
        self.maxWaiting = maxWaiting
    }

    /// Called on the link's event loop.
    func addLink(_ link: WorkerLinkHandler, eventLoop: EventLoop) {
        loops[ObjectIdentifier(eventLoop)]?.links.value.byID[ObjectIdentifier(link)] = link
    }

    /// Called on the link's event loop.
    func removeLink(_ link: WorkerLinkHandler, eventLoop: EventLoop) {
        loops[ObjectIdentifier(eventLoop)]?.links.value.byID.removeValue(forKey: ObjectIdentifier(link))
    }

    func add(_ entry: Entry) {
        entries.withLockedValue { $0[entry.info.id] = entry }
    }

    func markReported(_ id: String) {
        entries.withLockedValue { $0[id]?.reported = true }
    }

    func remove(_ id: String) {
        _ = entries.withLockedValue { $0.removeValue(forKey: id) }
    }

    var connections: [ConnectionInfo] { entries.withLockedValue { $0.values.filter(\.reported).map(\.info) } }
    var count: Int { entries.withLockedValue { $0.count } }
    var localUsers: [String] { Array(Set(connections.map(\.user))).sorted() }

    /// Without the coordinator: who this worker last knew to be online, plus its own users.
    var bestKnownOnline: [String] {
        let known = relay.withLockedValue { $0.knownOnline }
        return Array(known.union(localUsers)).sorted()
    }

    private func forEach(where predicate: (Entry) -> Bool, _ body: @escaping @Sendable (WorkerLinkHandler, UInt32) -> Void) {
        let targets = entries.withLockedValue { $0.values.filter(predicate) }
        for t in targets {
            let link = t.link, stream = t.stream
            t.eventLoop.execute { body(link.value, stream) }
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

    /// Runs `body` for every gateway link, one task per event loop.
    private func broadcast(_ body: @escaping @Sendable (WorkerLinkHandler) -> Void) {
        for l in loops.values {
            let links = l.links
            // Always enqueued, never run inline when already on the loop: a gap fill relays
            // from elsewhere through the same queue, and only one FIFO keeps the two in order.
            l.eventLoop.execute {
                for link in links.value.byID.values { body(link) }
            }
        }
    }

    /// Tells every gateway that this worker drains.
    func announceDraining() {
        broadcast { $0.announceDraining() }
    }

    /// Subscribed and caught up: live messages go straight to the streams.
    var isRelaying: Bool { relay.withLockedValue { !$0.filling } }

    /// The subscription is gone: hold live messages until the gap is filled.
    func subscriptionLost() {
        relay.withLockedValue {
            $0.filling = true
            $0.epoch += 1
        }
    }

    /// The subscription is back: sessions ended while it was down are found by looking again.
    func recheckSessions() {
        broadcast { $0.recheckSessions() }
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
        let payload = ByteBuffer(string: ServerFrame.presence(user: user, online: online).json)
        broadcast { $0.deliverEvent(payload) }
    }

    func closeUser(_ user: String, code: UInt16) {
        forEach(where: { $0.info.user == user }) { link, stream in link.closeStream(stream, code: code) }
    }

    func closeSessions(hash: String, code: UInt16) {
        forEach(where: { $0.sessionHash == hash }) { link, stream in link.closeStream(stream, code: code) }
    }

    /// Closes up to `limit` connections not yet asked to close; returns how many it asked.
    func closeSome(code: UInt16, limit: Int) -> Int {
        let asked = drained.withLockedValue { $0 }
        let targets = entries.withLockedValue { e in Array(e.values.filter { !asked.contains($0.info.id) }.prefix(limit)) }
        drained.withLockedValue { d in for t in targets { d.insert(t.info.id) } }
        for t in targets {
            let link = t.link, stream = t.stream
            t.eventLoop.execute { link.value.closeStream(stream, code: code) }
        }
        return targets.count
    }
}

/// A message encoded once and shared by every link (copies share the buffer's storage).
struct SharedFrame: Sendable {
    let message: ChatMessage
    let payload: ByteBuffer

    init(message: ChatMessage) {
        self.message = message
        self.payload = ByteBuffer(string: message.json)
    }
}
