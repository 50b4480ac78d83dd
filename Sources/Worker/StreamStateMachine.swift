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
    /// The greatest message id sent on this stream.
    private(set) var lastSent = MessageID.zero
    private var replaysRunning = 0
    private var held: [(id: MessageID, payload: Payload)] = []
    private var eventsBeforeWelcome: [Payload] = []
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

    /// The welcome frame is ready; `lastHistory` is the newest message it carries.
    mutating func welcomeReady(_ welcome: Payload, lastHistory: MessageID?) -> [Action] {
        guard phase == .welcoming else { return [] }
        phase = .live
        var actions: [Action] = [.send(welcome)]
        for e in eventsBeforeWelcome { actions.append(.send(e)) }
        eventsBeforeWelcome = []
        if let lastHistory { lastSent = max(lastSent, lastHistory) }
        actions += releaseHeld()
        busy = false
        actions += nextFrame()
        return actions
    }

    /// A message relayed live to the stream's room.
    mutating func live(id: MessageID, payload: Payload) -> LiveDecision {
        switch phase {
        case .closed: return .skip
        case .checkingSession, .welcoming: break
        case .live where replaysRunning == 0:
            guard id > lastSent else { return .skip }
            lastSent = id
            return .send
        case .live: break
        }
        guard held.count < maxHeld else { return .closeSlow }
        held.append((id, payload))
        return .held
    }

    /// An event for every stream (presence): after `welcome`, never before.
    mutating func event(_ payload: Payload) -> LiveDecision {
        switch phase {
        case .closed: return .skip
        case .live: return .send
        case .checkingSession, .welcoming:
            guard eventsBeforeWelcome.count < maxHeld else { return .skip }
            eventsBeforeWelcome.append(payload)
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

    /// A `sync` replay starts: hold live messages until it ends.
    mutating func replayBegan() {
        replaysRunning += 1
    }

    /// Stored messages for the replay, in order; sent even if older than what live delivery sent.
    mutating func replayed(_ messages: [(id: MessageID, payload: Payload)]) -> [Action] {
        guard phase != .closed else { return [] }
        var actions: [Action] = []
        actions.reserveCapacity(messages.count)
        for m in messages {
            actions.append(.send(m.payload))
            lastSent = max(lastSent, m.id)
        }
        return actions
    }

    /// The replay is over: send `synced` (if given), then what was held and is newer.
    mutating func replayEnded(_ synced: Payload?) -> [Action] {
        replaysRunning = max(0, replaysRunning - 1)
        guard phase != .closed else { return [] }
        var actions: [Action] = []
        if let synced { actions.append(.send(synced)) }
        actions += releaseHeld()
        return actions
    }

    private mutating func releaseHeld() -> [Action] {
        guard phase == .live, replaysRunning == 0, !held.isEmpty else { return [] }
        let waiting = held
        held = []
        var actions: [Action] = []
        for m in waiting where m.id > lastSent {
            lastSent = m.id
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
        eventsBeforeWelcome = []
        inbox = []
        inboxHead = 0
        inboxBytes = 0
    }
}
