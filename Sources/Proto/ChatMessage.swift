/// A stored chat message as it travels between workers and to clients.
public struct ChatMessage: Sendable, Equatable {
    public var id: MessageID
    public var room: String
    public var from: String
    public var text: String
    public var ts: UInt64

    public init(id: MessageID, room: String, from: String, text: String, ts: UInt64) {
        self.id = id
        self.room = room
        self.from = from
        self.text = text
        self.ts = ts
    }

    /// The payload published on a room's pub/sub channel: `id \n ts \n from \n text`.
    /// User names never hold a newline; the text may, so it comes last.
    public var relayPayload: String { "\(id)\n\(ts)\n\(from)\n\(text)" }

    /// Parses a relay payload published for `room`.
    ///
    /// Split on the newline byte, not on Characters: "\r\n" is one Character in Swift, so a
    /// field ending in "\r" would swallow the separator after it (found by the fuzzer).
    public init?(relayPayload: String, room: String) {
        let parts = relayPayload.utf8.split(separator: UInt8(ascii: "\n"), maxSplits: 3, omittingEmptySubsequences: false)
            .map { String(decoding: $0, as: UTF8.self) }
        guard parts.count == 4, let id = MessageID(parts[0]), let ts = UInt64(parts[1]) else { return nil }
        self.init(id: id, room: room, from: parts[2], text: parts[3], ts: ts)
    }

    /// The JSON object of a `message` frame.
    public var json: String {
        var out = "{\"type\":\"message\",\"id\":\"\(id)\",\"room\":"
        JSONText.appendString(room, to: &out)
        out.append(",\"from\":")
        JSONText.appendString(from, to: &out)
        out.append(",\"text\":")
        JSONText.appendString(text, to: &out)
        out.append(",\"ts\":\(ts)}")
        return out
    }
}
