import Proto

/// The chat logic of one client stream, without I/O (the shape of async-http-client's
/// `HTTP1ConnectionStateMachine`): it takes events and returns what to do; the link handler
/// performs the actions on its event loop. Times are milliseconds from any clock the caller
/// chooses, so tests drive it with a fake one.
///
/// The rules it keeps:
/// - `welcome` is the first frame. Before it, presence events wait, live messages are held,
///   and client frames queue; the session is re-checked in Redis before anything else.
/// - Live messages are sent in id order and never twice: one not newer than the last id
///   sent is dropped. While a `sync` replay runs they are held, then the ones newer than
///   what the replay sent follow it. Too many held closes the stream with 4008.
/// - Client frames run one at a time, in order; past `inputHigh` queued the client's input
///   is paused (TCP backpressure), and resumed at `inputLow`.
/// - The session: an open stream keeps it from idle expiry (a touch every half idle
///   period), and it closes with 4001 at the session's absolute end or when it is gone.
struct StreamStateMachine<Payload, Frame> {
    enum Phase: Equatable { case checkingSession, welcoming, live, closed }

    enum Action {
        /// Look the session up in Redis (by hash) and answer with `sessionChecked`.
        case checkSession
        /// Report the stream to the coordinator, read the room's history, answer with `welcomeReady`.
        case fetchWelcome
        case send(Payload)
        /// Run one client frame; answer with `frameDone` when it is finished.
        case process(Frame)
        case pauseInput
        case resumeInput
        /// Slide the session's idle expiry; answer `sessionLost` if it is gone.
        case touchSession
        /// Close the client's WebSocket with this code (the stream is over).
        case close(UInt16)
        /// Tell the coordinator the connection closed (only after it was reported open).
        case reportClosed
    }

    /// What to do with one live message (an enum, not actions: the hot path of fan-out).
    enum LiveDecision: Equatable { case send, held, skip, closeSlow }

    private(set) var phase = Phase.checkingSession
    /// The rooms the stream's user is in, each with the greatest message id sent of it
    /// (ids order events within a room only). Known from `welcomeReady` on.
    private(set) var rooms: [String: MessageID] = [:]
    /// Membership changes that came before the welcome's snapshot, applied after it in order.
    private var pendingMembership: [(room: String, lastID: MessageID?)] = []
    private var replaysRunning: [String: Int] = [:]
    private var held: [(room: String, id: MessageID, payload: Payload)] = []
    /// Events before `welcome`; `room` nil for the ones of every stream (presence, the user's own).
    private var eventsBeforeWelcome: [(room: String?, payload: Payload)] = []
    private var inbox: [(frame: Frame, bytes: Int)] = []
    private var inboxHead = 0
    private var inboxBytes = 0
    private var busy = true
    private var inputPaused = false
    private var reportedOpen = false
    private var sessionEndsAtMs: Int64 = .max
    private var lastTouchMs: Int64

    let maxHeld: Int
    let idleMs: Int64
    let inputHigh: Int
    let inputLow: Int

    /// Bytes of client frames that may wait, whatever the pause: frames already on their way
    /// when input is paused still arrive (a gateway reads at loopback speed before the pause
    /// reaches it), so the bound is generous; past it the client gets 1008.
    let maxInboxBytes: Int

    init(nowMs: Int64, idleMs: Int64, maxHeld: Int = 1024, inputHigh: Int = 64, inputLow: Int = 16,
         maxInboxBytes: Int = 16 << 20) {
        self.maxInboxBytes = maxInboxBytes
        self.lastTouchMs = nowMs
        self.idleMs = idleMs
        self.maxHeld = maxHeld
        self.inputHigh = inputHigh
        self.inputLow = inputLow
    }

    var isClosed: Bool { phase == .closed }
    /// The session's absolute end, once it was checked.
    var sessionEndsAt: Int64? { sessionEndsAtMs == .max ? nil : sessionEndsAtMs }
    var queuedFrames: Int { inbox.count - inboxHead }

    /// The stream opened: check its session first.
    mutating func opened() -> [Action] {
        [.checkSession]
    }

    /// The session lookup answered: `endsAtMs` is its absolute end, nil if it is not valid
    /// (unknown, expired, or of another user than the stream claims).
    mutating func sessionChecked(endsAtMs: Int64?, nowMs: Int64) -> [Action] {
        guard phase == .checkingSession else { return [] }
        guard let endsAtMs, nowMs < endsAtMs else { return close(4001) }
        sessionEndsAtMs = endsAtMs
        lastTouchMs = nowMs
        phase = .welcoming
        reportedOpen = true
        return [.fetchWelcome]
    }

    /// The session could not be checked (Redis down): 1013, the client reconnects later.
    mutating func sessionCheckFailed() -> [Action] {
        guard phase == .checkingSession else { return [] }
        return close(1013)
    }

    /// The welcome frame is ready; `lastHistory` is the newest lobby message it carries (v1's one room).
    mutating func welcomeReady(_ welcome: Payload, lastHistory: MessageID?) -> [Action] {
        welcomeReady(welcome, rooms: [ChatLimits.lobby: lastHistory ?? .zero])
    }

    /// The welcome frame is ready, with the user's rooms as the snapshot read for it, each with
    /// the newest id the client is taken to have (the lobby's last history id, other rooms' last_id).
    mutating func welcomeReady(_ welcome: Payload, rooms snapshot: [String: MessageID]) -> [Action] {
        guard phase == .welcoming else { return [] }
        phase = .live
        rooms = snapshot
        for change in pendingMembership {
            if let id = change.lastID { _ = joined(room: change.room, lastID: id) } else { _ = left(room: change.room) }
        }
        pendingMembership = []
        var actions: [Action] = [.send(welcome)]
        for e in eventsBeforeWelcome where e.room.map({ rooms[$0] != nil }) ?? true { actions.append(.send(e.payload)) }
        eventsBeforeWelcome = []
        actions += releaseHeld()
        busy = false
        actions += nextFrame()
        return actions
    }

    /// Whether the user is in `room` (as this stream last heard).
    func isMember(_ room: String) -> Bool { rooms[room] != nil }
    var memberRooms: [String] { Array(rooms.keys) }

    /// The user is now in `room`, whose newest event was `lastID`: what follows is delivered.
    /// Returns whether the stream was not in it before (false too before the welcome's snapshot).
    mutating func joined(room: String, lastID: MessageID) -> Bool {
        switch phase {
        case .closed: return false
        case .checkingSession, .welcoming:
            pendingMembership.append((room, lastID))
            return false
        case .live:
            if let sent = rooms[room] {
                rooms[room] = max(sent, lastID)
                return false
            }
            rooms[room] = lastID
            return true
        }
    }

    /// The user is no longer in `room`: nothing more of it reaches the stream, held or live.
    /// Returns whether it was in it.
    mutating func left(room: String) -> Bool {
        switch phase {
        case .closed: return false
        case .checkingSession, .welcoming:
            pendingMembership.append((room, nil))
            return false
        case .live:
            guard rooms.removeValue(forKey: room) != nil else { return false }
            held.removeAll { $0.room == room }
            return true
        }
    }

    /// A history event relayed live to one of the user's rooms.
    mutating func live(room: String = ChatLimits.lobby, id: MessageID, payload: Payload) -> LiveDecision {
        switch phase {
        case .closed: return .skip
        case .checkingSession, .welcoming: break
        case .live:
            guard let sent = rooms[room] else { return .skip }
            guard replaysRunning[room, default: 0] == 0 else { break }
            guard id > sent else { return .skip }
            rooms[room] = id
            return .send
        }
        guard held.count < maxHeld else { return .closeSlow }
        held.append((room, id, payload))
        return .held
    }

    /// A live-only event of a room (`member`, `typing`, `room_updated`): for members, after `welcome`.
    mutating func roomEvent(room: String, payload: Payload) -> LiveDecision {
        switch phase {
        case .closed: return .skip
        case .live: return rooms[room] != nil ? .send : .skip
        case .checkingSession, .welcoming:
            guard eventsBeforeWelcome.count < maxHeld else { return .skip }
            eventsBeforeWelcome.append((room, payload))
            return .held
        }
    }

    /// An event for every stream (presence) or for all of the user's: after `welcome`, never before.
    mutating func event(_ payload: Payload) -> LiveDecision {
        switch phase {
        case .closed: return .skip
        case .live: return .send
        case .checkingSession, .welcoming:
            guard eventsBeforeWelcome.count < maxHeld else { return .skip }
            eventsBeforeWelcome.append((nil, payload))
            return .held
        }
    }

    /// A frame from the client.
    mutating func clientFrame(_ frame: Frame, bytes: Int = 1) -> [Action] {
        guard phase != .closed else { return [] }
        if !busy {
            busy = true
            return [.process(frame)]
        }
        guard inboxBytes + bytes <= maxInboxBytes else { return close(1008) }
        inbox.append((frame, bytes))
        inboxBytes += bytes
        if queuedFrames >= inputHigh && !inputPaused {
            inputPaused = true
            return [.pauseInput]
        }
        return []
    }

    /// The frame given in the last `process` is finished.
    mutating func frameDone() -> [Action] {
        guard phase != .closed else { return [] }
        busy = false
        return nextFrame()
    }

    private mutating func nextFrame() -> [Action] {
        guard !busy, inboxHead < inbox.count else { return [] }
        let (frame, bytes) = inbox[inboxHead]
        inboxBytes -= bytes
        inboxHead += 1
        if inboxHead == inbox.count {
            inbox.removeAll(keepingCapacity: true)
            inboxHead = 0
        }
        busy = true
        var actions: [Action] = [.process(frame)]
        if inputPaused && queuedFrames <= inputLow {
            inputPaused = false
            actions.append(.resumeInput)
        }
        return actions
    }

    /// A replay of `room` starts (a `sync`, or the catch-up after the welcome): hold its live events until it ends.
    mutating func replayBegan(room: String = ChatLimits.lobby) {
        replaysRunning[room, default: 0] += 1
    }

    /// Stored events of `room` for the replay, in order; sent even if older than what live
    /// delivery sent (the client asked for them), and only while the user is in the room.
    mutating func replayed(room: String = ChatLimits.lobby, _ messages: [(id: MessageID, payload: Payload)]) -> [Action] {
        guard phase != .closed, let sent = rooms[room] else { return [] }
        var actions: [Action] = []
        actions.reserveCapacity(messages.count)
        var newest = sent
        for m in messages {
            actions.append(.send(m.payload))
            newest = max(newest, m.id)
        }
        rooms[room] = newest
        return actions
    }

    /// The replay is over: send `synced` (if given), then what was held and is newer.
    mutating func replayEnded(room: String = ChatLimits.lobby, _ synced: Payload?) -> [Action] {
        let running = replaysRunning[room, default: 0]
        if running <= 1 { replaysRunning.removeValue(forKey: room) } else { replaysRunning[room] = running - 1 }
        guard phase != .closed else { return [] }
        var actions: [Action] = []
        if let synced, rooms[room] != nil { actions.append(.send(synced)) }
        actions += releaseHeld()
        return actions
    }

    private mutating func releaseHeld() -> [Action] {
        guard phase == .live, !held.isEmpty else { return [] }
        let waiting = held
        held = []
        var actions: [Action] = []
        for m in waiting {
            guard let sent = rooms[m.room] else { continue }
            if replaysRunning[m.room, default: 0] > 0 {
                held.append(m)
                continue
            }
            guard m.id > sent else { continue }
            rooms[m.room] = m.id
            actions.append(.send(m.payload))
        }
        return actions
    }

    /// A periodic tick (about once a second).
    mutating func tick(nowMs: Int64) -> [Action] {
        guard phase == .live || phase == .welcoming else { return [] }
        if nowMs >= sessionEndsAtMs { return close(4001) }
        if nowMs - lastTouchMs >= idleMs / 2 {
            lastTouchMs = nowMs
            return [.touchSession]
        }
        return []
    }

    /// The session is gone from Redis (logged out, expired): 4001.
    mutating func sessionLost() -> [Action] {
        close(4001)
    }

    /// The server closes the stream (logout, drain, slow client).
    mutating func close(_ code: UInt16) -> [Action] {
        guard phase != .closed else { return [] }
        finish()
        var actions: [Action] = [.close(code)]
        if reportedOpen { actions.append(.reportClosed) }
        return actions
    }

    /// The client went away.
    mutating func clientClosed() -> [Action] {
        guard phase != .closed else { return [] }
        finish()
        return reportedOpen ? [.reportClosed] : []
    }

    private mutating func finish() {
        phase = .closed
        held = []
        rooms = [:]
        pendingMembership = []
        eventsBeforeWelcome = []
        inbox = []
        inboxHead = 0
        inboxBytes = 0
    }
}
