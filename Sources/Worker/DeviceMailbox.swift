import Proto

/// The `to_device` delivery of one stream, without I/O: which device the connection is bound
/// to (by `device`), and the order between the device's pending messages (read from its inbox
/// in Redis right after binding) and the ones published live meanwhile. Every message goes
/// out once, in inbox-id order; a live one that arrives while the pending ones are being read
/// waits for them.
struct DeviceMailbox<Payload> {
    enum Decision: Equatable { case send, held, skip }

    private(set) var device: String?
    /// Bumped at every bind: a read of pending messages begun for an older bind is void.
    private(set) var generation = 0
    private var fetching = false
    private var lastDelivered = MessageID.zero
    private var held: [(id: MessageID, payload: Payload)] = []
    /// A live message was dropped while reading (too many held): the read goes on from the
    /// last one delivered instead of releasing what is held, so nothing is skipped (and then
    /// acknowledged unread).
    private var overflowed = false
    let maxHeld: Int

    /// How a read of pending messages ends.
    enum FetchEnd {
        /// Send these (what waited, newer than what the read sent); delivery is live now.
        case done([Payload])
        /// Read the inbox again after this id: some live messages were not kept.
        case reread(after: MessageID)
    }

    init(maxHeld: Int = 1000) {
        self.maxHeld = maxHeld
    }

    /// The connection is (re)bound to `device`; returns the generation of the read of its
    /// pending messages to start now, and the id to read after (what this connection has had).
    mutating func bind(_ device: String) -> (generation: Int, after: MessageID) {
        if self.device != device { lastDelivered = .zero }
        self.device = device
        generation += 1
        fetching = true
        overflowed = false
        held = []
        return (generation, lastDelivered)
    }

    /// Where a read that failed part way goes on from.
    var resumeAfter: MessageID { lastDelivered }

    mutating func unbind(_ device: String) {
        guard self.device == device else { return }
        self.device = nil
        fetching = false
        held = []
        generation += 1
    }

    /// A message published live for `device`.
    mutating func live(device: String, id: MessageID, payload: Payload) -> Decision {
        guard self.device == device, id > lastDelivered else { return .skip }
        if fetching {
            guard held.count < maxHeld else {
                overflowed = true      // still in the inbox: read again before going live
                return .skip
            }
            held.append((id, payload))
            return .held
        }
        lastDelivered = id
        return .send
    }

    /// A page of pending messages from the inbox (in order) for the read of `generation`:
    /// what to send.
    mutating func pending(_ page: [(id: MessageID, payload: Payload)], generation: Int) -> [Payload] {
        guard generation == self.generation, fetching else { return [] }
        var out: [Payload] = []
        for m in page where m.id > lastDelivered {
            lastDelivered = m.id
            out.append(m.payload)
        }
        return out
    }

    /// The read of `generation` reached the end of the inbox.
    mutating func fetched(generation: Int) -> FetchEnd {
        guard generation == self.generation, fetching else { return .done([]) }
        if overflowed {
            overflowed = false
            held = []
            return .reread(after: lastDelivered)
        }
        fetching = false
        let waiting = held
        held = []
        var out: [Payload] = []
        for m in waiting where m.id > lastDelivered {
            lastDelivered = m.id
            out.append(m.payload)
        }
        return .done(out)
    }
}

extension DeviceMailbox.FetchEnd: Equatable where Payload: Equatable {}
