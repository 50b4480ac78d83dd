/// A history event of a room (a message, an edit, a deletion, a reaction) as it travels
/// between workers and to clients.
///
/// `body` is the kind-specific part of the `message` frame as a JSON fragment, written once
/// by the worker that accepted it (`"text":"hi"`, `"kind":"edit","target":"…","text":"…"`, …)
/// and stored in the room's stream as it is, so relaying it never parses or re-encodes it.
public struct ChatMessage: Sendable, Equatable {
    public var id: MessageID
    public var room: String
    public var from: String
    public var body: String

    public var ts: UInt64 { id.ms }

    public init(id: MessageID, room: String, from: String, body: String) {
        self.id = id
        self.room = room
        self.from = from
        self.body = body
    }

    /// A plain text message (v1's only kind).
    public init(id: MessageID, room: String, from: String, text: String) {
        self.init(id: id, room: room, from: from, body: MessageContent.text(text).fragment)
    }

    /// The payload published on a room's pub/sub channel: `m \n id \n from \n body`.
    /// User names never hold a newline; the body may, so it comes last.
    public var relayPayload: String { "m\n\(id)\n\(from)\n\(body)" }

    /// The JSON object of a `message` frame.
    public var json: String {
        var out = "{\"type\":\"message\",\"id\":\"\(id)\",\"room\":"
        JSONText.appendString(room, to: &out)
        out.append(",\"from\":")
        JSONText.appendString(from, to: &out)
        out.append(",\"ts\":\(ts),")
        out.append(body)
        out.append("}")
        return out
    }
}

/// What a room's pub/sub channel carries (published by the worker's Lua scripts).
public enum RoomRelay: Sendable, Equatable {
    /// A history event, in id order.
    case history(ChatMessage)
    /// A live-only event for the room's members (`member`, `room_updated`): the frame's JSON.
    case event(json: String)
    /// `typing`: for the room's members but the typer's own connections.
    case typing(user: String, json: String)

    /// Parses a payload published on `room`'s channel.
    ///
    /// Split on the newline byte, not on Characters: "\r\n" is one Character in Swift, so a
    /// field ending in "\r" would swallow the separator after it (found by the fuzzer).
    public init?(payload: String, room: String) {
        let utf8 = payload.utf8
        guard utf8.count >= 2, utf8.dropFirst().first == UInt8(ascii: "\n") else { return nil }
        let rest = utf8.dropFirst(2)
        switch utf8.first {
        case UInt8(ascii: "m"):
            let parts = rest.split(separator: UInt8(ascii: "\n"), maxSplits: 2, omittingEmptySubsequences: false)
                .map { String(decoding: $0, as: UTF8.self) }
            guard parts.count == 3, let id = MessageID(parts[0]), !parts[2].isEmpty else { return nil }
            self = .history(ChatMessage(id: id, room: room, from: parts[1], body: parts[2]))
        case UInt8(ascii: "e"):
            guard !rest.isEmpty else { return nil }
            self = .event(json: String(decoding: rest, as: UTF8.self))
        case UInt8(ascii: "t"):
            let parts = rest.split(separator: UInt8(ascii: "\n"), maxSplits: 1, omittingEmptySubsequences: false)
                .map { String(decoding: $0, as: UTF8.self) }
            guard parts.count == 2, !parts[1].isEmpty else { return nil }
            self = .typing(user: parts[0], json: parts[1])
        default:
            return nil
        }
    }

    public var payload: String {
        switch self {
        case let .history(m): return m.relayPayload
        case let .event(json): return "e\n" + json
        case let .typing(user, json): return "t\n\(user)\n\(json)"
        }
    }
}

/// What a user's pub/sub channel carries: the events that follow a person to every worker
/// serving one of their connections. `except` names the connection that asked for the change
/// (it got the reply instead), or is empty.
public enum UserRelay: Sendable, Equatable {
    /// The user is now in `room`; its newest history event was `lastID`; `json` is the `room_added` frame.
    case added(room: String, lastID: MessageID, except: String, json: String)
    /// The user is no longer in `room`; `json` is the `room_removed` frame.
    case removed(room: String, except: String, json: String)
    /// A frame for every connection of the user (`read`, ...).
    case frame(except: String, json: String)
    /// A `to_device` message for the connections bound to `device`; `id` its inbox id.
    case toDevice(device: String, id: MessageID, json: String)
    /// The user removed `device`: every connection bound to it is unbound.
    case deviceRemoved(device: String)

    public init?(payload: String) {
        func split(_ n: Int) -> [String] {
            payload.utf8.split(separator: UInt8(ascii: "\n"), maxSplits: n, omittingEmptySubsequences: false)
                .map { String(decoding: $0, as: UTF8.self) }
        }
        switch payload.utf8.first {
        case UInt8(ascii: "a"):
            let p = split(4)
            guard p.count == 5, p[0] == "a", let id = MessageID(p[2]), !p[4].isEmpty else { return nil }
            self = .added(room: p[1], lastID: id, except: p[3], json: p[4])
        case UInt8(ascii: "r"):
            let p = split(3)
            guard p.count == 4, p[0] == "r", !p[3].isEmpty else { return nil }
            self = .removed(room: p[1], except: p[2], json: p[3])
        case UInt8(ascii: "f"):
            let p = split(2)
            guard p.count == 3, p[0] == "f", !p[2].isEmpty else { return nil }
            self = .frame(except: p[1], json: p[2])
        case UInt8(ascii: "x"):
            let p = split(1)
            guard p.count == 2, p[0] == "x", !p[1].isEmpty else { return nil }
            self = .deviceRemoved(device: p[1])
        case UInt8(ascii: "v"):
            let p = split(3)
            guard p.count == 4, p[0] == "v", !p[1].isEmpty, let id = MessageID(p[2]), !p[3].isEmpty else { return nil }
            self = .toDevice(device: p[1], id: id, json: p[3])
        default:
            return nil
        }
    }

    public var payload: String {
        switch self {
        case let .added(room, lastID, except, json): return "a\n\(room)\n\(lastID)\n\(except)\n\(json)"
        case let .removed(room, except, json): return "r\n\(room)\n\(except)\n\(json)"
        case let .frame(except, json): return "f\n\(except)\n\(json)"
        case let .toDevice(device, id, json): return "v\n\(device)\n\(id)\n\(json)"
        case let .deviceRemoved(device): return "x\n\(device)"
        }
    }
}
