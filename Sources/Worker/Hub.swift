import ChatCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Proto

/// The worker's local streams and its fan-out, routed by room.
///
/// The worker subscribes in Redis to a room's channel while one of its streams is in the
/// room (`retain`/`release`), and to a user's channel while it serves one of the user's
/// connections (`watchUser`/`unwatchUser`): it receives nothing of rooms it serves nobody in.
/// Each event is encoded once and handed to every gateway link on its own event loop, in the
/// order the subscription delivered it (one FIFO per loop).
///
/// A room's channel is caught up per room: from the moment its subscription is confirmed
/// (first time, or again after the subscription dropped) the room's stream is read from the
/// last id relayed, and live events wait until that gap fill is done, so connections see
/// every event of a room once and in id order.
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

    /// One room this worker relays.
    private struct RoomRelayState {
        var lastRelayed: MessageID
        var filling = true
        var fillRunning = false
        var waiting: [RoomRelay] = []
        /// From the Hub's one counter, new for every state and at every subscription loss:
        /// a gap fill begun for an older one is void.
        var epoch: Int
        var refs = 0
    }

    private struct UserWatch {
        var refs = 0
        var confirmed = false
        var waiters: [EventLoopPromise<Void>] = []
    }

    private struct Relay {
        var rooms: [String: RoomRelayState] = [:]
        var users: [String: UserWatch] = [:]
        var subscribed = false
        var epochs = 0
        /// SUBSCRIBEs sent per room channel and not yet confirmed (kept across a release): a
        /// fill waits for the last one, so a leave and join in quick succession cannot go live
        /// on the confirmation of a subscription that the UNSUBSCRIBE between ended.
        var pendingSubscribes: [String: Int] = [:]
        /// Who clients were last told is online (for diffs against coordinator snapshots).
        var knownOnline: Set<String> = []
    }

    /// The gateway links of one event loop, touched only on that loop: a broadcast is one
    /// task per loop that hands the event to each link there, which sends one frame.
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
    private let subscriber = NIOLockedValueBox<RedisSubscriber?>(nil)
    private let store: RoomStore
    private let logger: Logger
    private let fillLoop: EventLoop
    private let maxWaiting: Int

    init(group: EventLoopGroup, store: RoomStore, logger: Logger, maxWaiting: Int = 100_000) {
        var loops: [ObjectIdentifier: LoopLinks] = [:]
        for loop in group.makeIterator() {
            loops[ObjectIdentifier(loop)] = LoopLinks(eventLoop: loop, links: .makeBoxSendingValue(LinkSet(), eventLoop: loop))
        }
        self.loops = loops
        self.store = store
        self.logger = logger
        self.fillLoop = group.next()
        self.maxWaiting = maxWaiting
    }

    /// The subscription that `retain` and `watchUser` add channels to.
    func attach(_ s: RedisSubscriber) {
        subscriber.withLockedValue { $0 = s }
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

    /// Everyone online as this worker knows it (one snapshot for a whole members list).
    var onlineSet: Set<String> {
        relay.withLockedValue { $0.knownOnline }.union(entries.withLockedValue { $0.values.filter(\.reported).map(\.info.user) })
    }

    private func forEach(where predicate: (Entry) -> Bool, _ body: @escaping @Sendable (WorkerLinkHandler, UInt32) -> Void) {
        let targets = entries.withLockedValue { $0.values.filter(predicate) }
        for t in targets {
            let link = t.link, stream = t.stream
            t.eventLoop.execute { body(link.value, stream) }
        }
    }

    // MARK: rooms

    /// A local stream is in `room`, having seen it up to `start`: subscribe if this is the
    /// first. Returns the newest id this worker relayed of the room before (which the stream
    /// may have missed when it is past `start`).
    @discardableResult
    func retain(room: String, start: MessageID) -> MessageID {
        // Decided and written under the relay lock: SUBSCRIBE and UNSUBSCRIBE of one channel
        // reach Redis in the order the refcount changed.
        relay.withLockedValue { r -> MessageID in
            if var state = r.rooms[room] {
                state.refs += 1
                r.rooms[room] = state
                return state.lastRelayed
            }
            r.epochs += 1
            var state = RoomRelayState(lastRelayed: start, epoch: r.epochs)
            state.refs = 1
            r.rooms[room] = state
            if r.subscribed { r.pendingSubscribes[room, default: 0] += 1 }
            Telemetry.workerRooms.increment()
            subscriber.withLockedValue { $0 }?.subscribe([RoomStore.channel(room)])
            return start
        }
    }

    /// A local stream is no longer in `room`: unsubscribe after the last.
    func release(room: String) {
        relay.withLockedValue { r in
            guard var state = r.rooms[room] else { return }
            state.refs -= 1
            if state.refs > 0 {
                r.rooms[room] = state
                return
            }
            r.rooms.removeValue(forKey: room)
            Telemetry.workerRooms.decrement()
            subscriber.withLockedValue { $0 }?.unsubscribe([RoomStore.channel(room)])
        }
    }

    /// An event published on a room's channel. Fan-out happens under the relay lock so that
    /// a gap fill and live relay can never interleave out of order.
    func deliver(room: String, _ event: RoomRelay) {
        relay.withLockedValue { r in
            guard var state = r.rooms[room] else { return }
            if state.filling {
                if state.waiting.count < maxWaiting { state.waiting.append(event) }
                r.rooms[room] = state
                return
            }
            if case let .history(m) = event {
                if m.id <= state.lastRelayed { return }
                state.lastRelayed = m.id
                r.rooms[room] = state
            }
            fanOut(room: room, event)
        }
    }

    private func fanOut(room: String, _ event: RoomRelay) {
        switch event {
        case let .history(m):
            let frame = SharedFrame(message: m)
            broadcast { $0.deliverLive(frame) }
        case let .event(json):
            let payload = ByteBuffer(string: json)
            broadcast { $0.deliverRoomEvent(room: room, payload: payload, except: nil) }
        case let .typing(user, json):
            let payload = ByteBuffer(string: json)
            broadcast { $0.deliverRoomEvent(room: room, payload: payload, except: user) }
        }
    }

    /// A channel's subscription is confirmed: a room's channel is caught up from its stream.
    func channelSubscribed(_ channel: String) {
        if channel.hasPrefix(RoomStore.userChannelPrefix) {
            let user = String(channel.dropFirst(RoomStore.userChannelPrefix.count))
            let waiters = relay.withLockedValue { r -> [EventLoopPromise<Void>] in
                guard var w = r.users[user] else { return [] }
                w.confirmed = true
                let waiting = w.waiters
                w.waiters = []
                r.users[user] = w
                return waiting
            }
            for w in waiters { w.succeed(()) }
        } else if channel.hasPrefix(RoomStore.roomChannelPrefix) {
            fill(room: String(channel.dropFirst(RoomStore.roomChannelPrefix.count)), confirmed: true)
        }
    }

    /// Reads what the room's stream holds after the last id relayed, relays it, then what
    /// waited, and goes live; retried while Redis fails, void when the subscription dropped again.
    private func fill(room: String, confirmed: Bool = false) {
        let start = relay.withLockedValue { r -> (MessageID, Int)? in
            if confirmed, let n = r.pendingSubscribes[room] {
                if n <= 1 { r.pendingSubscribes.removeValue(forKey: room) } else { r.pendingSubscribes[room] = n - 1 }
            }
            guard var state = r.rooms[room], state.filling, !state.fillRunning, r.pendingSubscribes[room] == nil else { return nil }
            state.fillRunning = true
            r.rooms[room] = state
            return (state.lastRelayed, state.epoch)
        }
        guard let (after, epoch) = start else { return }
        store.since(after, room: room, on: fillLoop).whenComplete { result in
            switch result {
            case let .success(missed):
                self.finishFill(room: room, missed: missed, epoch: epoch)
            case let .failure(error):
                self.logger.warning("gap fill failed; retrying", metadata: ["room": "\(room)", "error": "\(error)"])
                self.relay.withLockedValue { r in
                    if r.rooms[room]?.epoch == epoch { r.rooms[room]?.fillRunning = false }
                }
                self.fillLoop.scheduleTask(in: .milliseconds(200)) { self.fill(room: room) }
            }
        }
    }

    private func finishFill(room: String, missed: [ChatMessage], epoch: Int) {
        let relayed = relay.withLockedValue { r -> Int in
            guard var state = r.rooms[room], state.epoch == epoch, state.filling else { return 0 }
            var n = 0
            for m in missed where m.id > state.lastRelayed {
                state.lastRelayed = m.id
                fanOut(room: room, .history(m))
                n += 1
            }
            for e in state.waiting {
                if case let .history(m) = e {
                    guard m.id > state.lastRelayed else { continue }
                    state.lastRelayed = m.id
                }
                fanOut(room: room, e)
            }
            state.waiting = []
            state.filling = false
            state.fillRunning = false
            r.rooms[room] = state
            return n
        }
        if relayed > 0 {
            logger.info("relayed messages missed while unsubscribed", metadata: ["room": "\(room)", "count": "\(relayed)"])
        }
    }

    // MARK: users

    /// A local stream of `user` opens: their channel is subscribed, and the future completes
    /// once Redis confirmed it (from then on no event of the user is missed).
    func watchUser(_ user: String, on loop: EventLoop) -> EventLoopFuture<Void> {
        let (ready, promise) = relay.withLockedValue { r -> (Bool, EventLoopPromise<Void>?) in
            var w = r.users[user] ?? UserWatch()
            if w.refs == 0 { subscriber.withLockedValue { $0 }?.subscribe([RoomStore.userChannel(user)]) }
            w.refs += 1
            if w.confirmed {
                r.users[user] = w
                return (true, nil)
            }
            let p = loop.makePromise(of: Void.self)
            w.waiters.append(p)
            r.users[user] = w
            return (false, p)
        }
        if ready { return loop.makeSucceededVoidFuture() }
        return promise!.futureResult
    }

    func unwatchUser(_ user: String) {
        let waiters = relay.withLockedValue { r -> [EventLoopPromise<Void>] in
            guard var w = r.users[user] else { return [] }
            w.refs -= 1
            if w.refs > 0 {
                r.users[user] = w
                return []
            }
            r.users.removeValue(forKey: user)
            subscriber.withLockedValue { $0 }?.unsubscribe([RoomStore.userChannel(user)])
            return w.waiters
        }
        for w in waiters { w.fail(StreamGone()) }
    }

    /// An event published on a user's channel.
    func deliverUser(_ user: String, _ event: UserRelay) {
        broadcast { $0.deliverUserEvent(user: user, event) }
    }

    // MARK: the subscription

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

    /// Subscribed to the fixed channels (logouts, credential changes).
    var isRelaying: Bool { relay.withLockedValue { $0.subscribed } }

    /// The subscription is gone: every room waits for a gap fill, every user channel for its confirmation.
    func subscriptionLost() {
        relay.withLockedValue { r in
            r.subscribed = false
            r.pendingSubscribes = [:]
            for room in Array(r.rooms.keys) {
                r.epochs += 1
                r.rooms[room]!.filling = true
                r.rooms[room]!.fillRunning = false
                r.rooms[room]!.epoch = r.epochs
            }
            for user in Array(r.users.keys) { r.users[user]!.confirmed = false }
        }
    }

    /// The subscription is back: sessions ended and memberships changed while it was down
    /// are found by looking again.
    func subscriptionRestored() {
        relay.withLockedValue { $0.subscribed = true }
        broadcast { $0.recheckStreams() }
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

    /// A user's devices changed: `devices {user}` to every stream (all share the lobby with them).
    func devicesChanged(user: String) {
        guard RoomID.isValidUser(user) else { return }
        let payload = ByteBuffer(string: ServerFrame.object(type: "devices", ref: nil, fields: "\"user\":" + JSONText.string(user)).json)
        broadcast { $0.deliverEvent(payload) }
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
