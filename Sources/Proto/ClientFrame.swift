import Foundation

/// The limits of the client contract (protocol.md).
public enum ChatLimits {
    /// Largest text in Unicode scalar values, after trimming.
    public static let maxTextScalars = 2000
    /// Largest WebSocket message a client may send; larger closes with 1009.
    public static let maxFrameBytes = 64 * 1024
    /// Longest client `ref` we remember.
    public static let maxRefBytes = 128
    /// The room every user is in.
    public static let lobby = "lobby"
    /// Room titles and topics, in code points.
    public static let maxTitleScalars = 80
    public static let maxTopicScalars = 250
    /// An `e2ee` object, as JSON bytes.
    public static let maxE2EEBytes = 16 * 1024
    /// A reaction's emoji, in code points.
    public static let maxEmojiScalars = 16
    /// `history` page sizes.
    public static let historyDefault = 50
    public static let historyMax = 100
    /// A directory search string, in bytes.
    public static let maxQueryBytes = 100
    /// End-to-end encryption primitives (opaque to the server), as JSON bytes.
    public static let maxDeviceBytes = 4 * 1024
    public static let maxPayloadBytes = 16 * 1024
    public static let maxBackupBytes = 48 * 1024
    public static let maxDevicesPerUser = 10
    public static let maxKeysUsers = 100
    public static let maxToDeviceMessages = 100
}

/// One message of `to_device`: for `device` of `user`, `payload` the JSON of an opaque value.
public struct ToDeviceMessage: Equatable, Sendable {
    public var user: String
    public var device: String
    public var payload: String

    public init(user: String, device: String, payload: String) {
        self.user = user
        self.device = device
        self.payload = payload
    }
}

/// Room ids: a public or private room's name, or a dm's `dm:<user1>:<user2>`.
public enum RoomID {
    /// A public or private room's name (already folded): 1–32 of `a-z 0-9 - _`, starting with a letter or digit.
    public static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...32).contains(bytes.count), isLowerAlnum(bytes[0]) else { return false }
        return bytes.allSatisfy { isLowerAlnum($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") }
    }

    private static func isLowerAlnum(_ c: UInt8) -> Bool { (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x7A) }

    /// Names are folded to lower case in ASCII only (`T-AB12` is `t-ab12`; `ü` stays and is refused).
    public static func fold(_ name: String) -> String {
        String(decoding: name.utf8.map { ($0 >= 0x41 && $0 <= 0x5A) ? $0 + 32 : $0 }, as: UTF8.self)
    }

    /// A user name as the users file allows it.
    public static func isValidUser(_ name: String) -> Bool {
        (1...32).contains(name.utf8.count) && name.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x2D || c == 0x2E
        }
    }

    /// The dm of two users: their names in byte order.
    public static func dm(_ a: String, _ b: String) -> String {
        Array(a.utf8).lexicographicallyPrecedes(Array(b.utf8)) ? "dm:\(a):\(b)" : "dm:\(b):\(a)"
    }

    /// The two users of a dm id, if it is one.
    public static func dmUsers(_ id: String) -> (String, String)? {
        guard id.hasPrefix("dm:") else { return nil }
        let parts = id.dropFirst(3).split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2, isValidUser(parts[0]), isValidUser(parts[1]), dm(parts[0], parts[1]) == id,
              parts[0] != parts[1] else { return nil }
        return (parts[0], parts[1])
    }

    /// A room reference in a client frame: a folded name or a well-formed dm id.
    public static func reference(_ raw: String) -> String? {
        if raw.hasPrefix("dm:") { return dmUsers(raw) != nil ? raw : nil }
        let folded = fold(raw)
        return isValidName(folded) ? folded : nil
    }
}

/// JSONSerialization gives NSNumber for numbers and booleans alike, and `1 as? Bool` succeeds:
/// only the boolean class is a JSON true/false.
private let jsonBoolType = type(of: NSNumber(value: true))
func isJSONBool(_ value: Any) -> Bool { type(of: value as AnyObject) == jsonBoolType }

/// A message's content: plain text, or an encrypted room's opaque `e2ee` object (its JSON).
public enum MessageContent: Equatable, Sendable {
    case text(String)
    case e2ee(String)

    public var isEncrypted: Bool { if case .e2ee = self { true } else { false } }

    /// The content as a JSON fragment: `"text":"…"` or `"e2ee":{…}`.
    public var fragment: String {
        switch self {
        case let .text(t): return "\"text\":" + JSONText.string(t)
        case let .e2ee(json): return "\"e2ee\":" + json
        }
    }
}

/// A frame a client sent, after validation (every one but `typing` is answered with its `ref`).
public enum ClientFrame: Equatable, Sendable {
    public enum RoomKind: String, Sendable { case `public`, `private` }

    case send(content: MessageContent, ref: String?, room: String, replyTo: MessageID? = nil)
    case sync(since: MessageID, room: String)
    case edit(room: String, id: MessageID, content: MessageContent, ref: String?)
    case delete(room: String, id: MessageID, ref: String?)
    case react(room: String, id: MessageID, emoji: String, on: Bool, ref: String?)
    case createRoom(name: String, kind: RoomKind, title: String?, topic: String?, encrypted: Bool, ref: String?)
    case join(room: String, ref: String?)
    case leave(room: String, ref: String?)
    case invite(room: String, user: String, ref: String?)
    case remove(room: String, user: String, ref: String?)
    case setRoom(room: String, title: String?, topic: String?, ref: String?)
    case openDM(user: String, ref: String?)
    case rooms(ref: String?)
    case directory(query: String, ref: String?)
    case members(room: String, ref: String?)
    case history(room: String, before: MessageID?, limit: Int, ref: String?)
    case read(room: String, id: MessageID, ref: String?)
    case typing(room: String, ref: String?)
    /// `json` is the device object as sent (re-encoded), `id` its `id`.
    case device(id: String, json: String, ref: String?)
    case deviceRemove(id: String, ref: String?)
    case keys(users: [String], ref: String?)
    case toDevice(messages: [ToDeviceMessage], ref: String?)
    case toDeviceAck(upto: MessageID, ref: String?)
    case backupPut(json: String, ref: String?)
    case backupGet(ref: String?)

    /// A device id: 1–64 of `A-Z a-z 0-9 - _`.
    public static func isValidDeviceID(_ id: String) -> Bool {
        (1...64).contains(id.utf8.count) && id.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x2D
        }
    }

    /// v1's plain-text send.
    public static func send(text: String, ref: String?, room: String) -> ClientFrame {
        .send(content: .text(text), ref: ref, room: room)
    }

    public var ref: String? {
        switch self {
        case let .send(_, ref, _, _), let .edit(_, _, _, ref), let .delete(_, _, ref), let .react(_, _, _, _, ref),
             let .createRoom(_, _, _, _, _, ref), let .join(_, ref), let .leave(_, ref), let .invite(_, _, ref),
             let .remove(_, _, ref), let .setRoom(_, _, _, ref), let .openDM(_, ref), let .rooms(ref),
             let .directory(_, ref), let .members(_, ref), let .history(_, _, _, ref), let .read(_, _, ref),
             let .typing(_, ref), let .device(_, _, ref), let .deviceRemove(_, ref), let .keys(_, ref),
             let .toDevice(_, ref), let .toDeviceAck(_, ref), let .backupPut(_, ref), let .backupGet(ref):
            return ref
        case .sync:
            return nil
        }
    }
}

/// Why a client frame was rejected; `code` is the contract's `error` code.
public struct ClientFrameError: Error, Equatable, Sendable {
    public enum Code: String, Sendable {
        case badRequest = "bad_request"
        case unknownType = "unknown_type"
        case tooLong = "too_long"
        case empty = "empty"
    }

    public var code: Code
    public var message: String
    public var ref: String?

    public init(_ code: Code, _ message: String, ref: String? = nil) {
        self.code = code
        self.message = message
        self.ref = ref
    }
}

extension ClientFrame {
    /// Decodes and validates one text frame from a client.
    public static func decode(_ bytes: some Collection<UInt8>) -> Result<ClientFrame, ClientFrameError> {
        let data = Data(bytes)
        guard let object = (try? JSONSerialization.jsonObject(with: data, options: [])) as? [String: Any] else {
            return .failure(.init(.badRequest, "frame is not a JSON object"))
        }
        guard let type = object["type"] as? String else {
            return .failure(.init(.badRequest, "missing string field 'type'"))
        }
        // A ref that is present but not a short string is itself a bad request.
        var ref: String?
        if let rawRef = object["ref"] {
            guard let r = rawRef as? String, r.utf8.count <= ChatLimits.maxRefBytes else {
                return .failure(.init(.badRequest, "'ref' must be a string of at most \(ChatLimits.maxRefBytes) bytes"))
            }
            ref = r
        }
        do {
            return .success(try Fields(object: object, ref: ref).frame(type: type))
        } catch let error as ClientFrameError {
            return .failure(error)
        } catch {
            return .failure(.init(.badRequest, "malformed frame", ref: ref))
        }
    }

    /// Trims leading and trailing Unicode White_Space.
    public static func trimUnicodeWhitespace(_ s: String) -> String {
        let scalars = s.unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
              let last = scalars.lastIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        return String(scalars[first...last])
    }

    /// The fields of one frame, read with the contract's error for each kind of mistake.
    private struct Fields {
        let object: [String: Any]
        let ref: String?

        func fail(_ code: ClientFrameError.Code, _ message: String) -> ClientFrameError { .init(code, message, ref: ref) }

        func string(_ key: String) throws -> String {
            guard let s = object[key] as? String else { throw fail(.badRequest, "missing string field '\(key)'") }
            return s
        }

        func optionalString(_ key: String) throws -> String? {
            guard let raw = object[key], !(raw is NSNull) else { return nil }
            guard let s = raw as? String else { throw fail(.badRequest, "'\(key)' must be a string") }
            return s
        }

        func id(_ key: String) throws -> MessageID {
            guard let s = object[key] as? String, let id = MessageID(s) else { throw fail(.badRequest, "'\(key)' must be a message id") }
            return id
        }

        func optionalID(_ key: String) throws -> MessageID? {
            guard let raw = object[key], !(raw is NSNull) else { return nil }
            guard let s = raw as? String, let id = MessageID(s) else { throw fail(.badRequest, "'\(key)' must be a message id") }
            return id
        }

        func bool(_ key: String, default value: Bool? = nil) throws -> Bool {
            guard let raw = object[key] else {
                if let value { return value }
                throw fail(.badRequest, "missing bool field '\(key)'")
            }
            guard isJSONBool(raw), let b = raw as? Bool else { throw fail(.badRequest, "'\(key)' must be true or false") }
            return b
        }

        /// A room reference; `"lobby"` when absent and `defaultLobby`.
        func room(defaultLobby: Bool = false) throws -> String {
            guard let raw = object["room"] else {
                if defaultLobby { return ChatLimits.lobby }
                throw fail(.badRequest, "missing string field 'room'")
            }
            guard let s = raw as? String, let room = RoomID.reference(s) else { throw fail(.badRequest, "'room' is not a room id") }
            return room
        }

        func user(_ key: String = "user") throws -> String {
            let u = try string(key)
            guard RoomID.isValidUser(u) else { throw fail(.badRequest, "'\(key)' is not a user name") }
            return u
        }

        /// `text` (trimmed, 1–2000 code points) or `e2ee` (an object of at most 16 KiB), exactly one.
        func content() throws -> MessageContent {
            let text = object["text"].flatMap { $0 is NSNull ? nil : $0 }, e2ee = object["e2ee"].flatMap { $0 is NSNull ? nil : $0 }
            if text != nil && e2ee != nil { throw fail(.badRequest, "give 'text' or 'e2ee', not both") }
            if let e2ee {
                guard let dict = e2ee as? [String: Any], JSONSerialization.isValidJSONObject(dict),
                      let data = try? JSONSerialization.data(withJSONObject: dict, options: [.sortedKeys]) else {
                    throw fail(.badRequest, "'e2ee' must be an object")
                }
                guard data.count <= ChatLimits.maxE2EEBytes else { throw fail(.tooLong, "'e2ee' is larger than 16 KiB") }
                return .e2ee(String(decoding: data, as: UTF8.self))
            }
            guard let raw = text as? String else { throw fail(.badRequest, "missing string field 'text'") }
            let trimmed = trimUnicodeWhitespace(raw)
            if trimmed.isEmpty { throw fail(.empty, "message is empty") }
            if trimmed.unicodeScalars.count > ChatLimits.maxTextScalars {
                throw fail(.tooLong, "message is longer than \(ChatLimits.maxTextScalars) characters")
            }
            return .text(trimmed)
        }

        /// A JSON value as compact text (an object, or a string for `string`), at most `max` bytes.
        func opaque(_ key: String, max: Int, allowString: Bool = true) throws -> String {
            guard let raw = object[key], !(raw is NSNull) else { throw fail(.badRequest, "missing field '\(key)'") }
            if allowString, let text = raw as? String {
                let json = JSONText.string(text)
                if json.utf8.count > max { throw fail(.tooLong, "'\(key)' is larger than \(max / 1024) KiB") }
                return json
            }
            guard let dict = raw as? [String: Any], JSONSerialization.isValidJSONObject(dict),
                  let data = try? JSONSerialization.data(withJSONObject: dict, options: [.sortedKeys]) else {
                throw fail(.badRequest, "'\(key)' must be an object")
            }
            if data.count > max { throw fail(.tooLong, "'\(key)' is larger than \(max / 1024) KiB") }
            return String(decoding: data, as: UTF8.self)
        }

        /// An optional title or topic: trimmed, at most `max` code points.
        func label(_ key: String, max: Int) throws -> String? {
            guard let raw = try optionalString(key) else { return nil }
            let trimmed = trimUnicodeWhitespace(raw)
            // A bad field (the contract's words): bad_request, not the message text's too_long.
            if trimmed.unicodeScalars.count > max { throw fail(.badRequest, "'\(key)' is longer than \(max) characters") }
            return trimmed
        }

        func frame(type: String) throws -> ClientFrame {
            switch type {
            case "send":
                return .send(content: try content(), ref: ref, room: try room(defaultLobby: true), replyTo: try optionalID("reply_to"))
            case "sync":
                return .sync(since: try id("since"), room: try room(defaultLobby: true))
            case "edit":
                return .edit(room: try room(), id: try id("id"), content: try content(), ref: ref)
            case "delete":
                return .delete(room: try room(), id: try id("id"), ref: ref)
            case "react":
                let emoji = try string("emoji")
                guard (1...ChatLimits.maxEmojiScalars).contains(emoji.unicodeScalars.count),
                      !trimUnicodeWhitespace(emoji).isEmpty else {
                    throw fail(.badRequest, "'emoji' must be 1 to \(ChatLimits.maxEmojiScalars) characters")
                }
                return .react(room: try room(), id: try id("id"), emoji: emoji, on: try bool("on"), ref: ref)
            case "create_room":
                let name = RoomID.fold(try string("name"))
                guard RoomID.isValidName(name) else {
                    throw fail(.badRequest, "a room name is 1 to 32 of a-z 0-9 - _, starting with a letter or digit")
                }
                guard let kind = RoomKind(rawValue: try string("kind")) else { throw fail(.badRequest, "'kind' must be public or private") }
                if kind == .public, object["encrypted"] != nil { throw fail(.badRequest, "a public room is never encrypted") }
                return .createRoom(name: name, kind: kind, title: try label("title", max: ChatLimits.maxTitleScalars),
                                   topic: try label("topic", max: ChatLimits.maxTopicScalars),
                                   encrypted: try bool("encrypted", default: false), ref: ref)
            case "join": return .join(room: try room(), ref: ref)
            case "leave": return .leave(room: try room(), ref: ref)
            case "invite": return .invite(room: try room(), user: try user(), ref: ref)
            case "remove": return .remove(room: try room(), user: try user(), ref: ref)
            case "set_room":
                return .setRoom(room: try room(), title: try label("title", max: ChatLimits.maxTitleScalars),
                                topic: try label("topic", max: ChatLimits.maxTopicScalars), ref: ref)
            case "open_dm": return .openDM(user: try user(), ref: ref)
            case "rooms": return .rooms(ref: ref)
            case "directory":
                let query = try optionalString("query") ?? ""
                guard query.utf8.count <= ChatLimits.maxQueryBytes else { throw fail(.tooLong, "'query' is longer than \(ChatLimits.maxQueryBytes) bytes") }
                // Folded as names are (ASCII only), as the Lua side compares.
                return .directory(query: RoomID.fold(query), ref: ref)
            case "members": return .members(room: try room(), ref: ref)
            case "history":
                var limit = ChatLimits.historyDefault
                if let raw = object["limit"] {
                    guard !isJSONBool(raw), let n = raw as? Int, (1...ChatLimits.historyMax).contains(n) else {
                        throw fail(.badRequest, "'limit' must be 1 to \(ChatLimits.historyMax)")
                    }
                    limit = n
                }
                return .history(room: try room(), before: try optionalID("before"), limit: limit, ref: ref)
            case "read": return .read(room: try room(), id: try id("id"), ref: ref)
            case "typing": return .typing(room: try room(), ref: ref)
            case "device":
                let json = try opaque("device", max: ChatLimits.maxDeviceBytes, allowString: false)
                guard let dict = object["device"] as? [String: Any], let id = dict["id"] as? String, ClientFrame.isValidDeviceID(id) else {
                    throw fail(.badRequest, "'device.id' must be 1 to 64 of A-Z a-z 0-9 - _")
                }
                return .device(id: id, json: json, ref: ref)
            case "device_remove":
                let id = try string("id")
                guard ClientFrame.isValidDeviceID(id) else { throw fail(.badRequest, "'id' is not a device id") }
                return .deviceRemove(id: id, ref: ref)
            case "keys":
                guard let users = object["users"] as? [Any], users.count <= ChatLimits.maxKeysUsers else {
                    throw fail(.badRequest, "'users' must be an array of at most \(ChatLimits.maxKeysUsers) names")
                }
                let names = try users.map { u -> String in
                    guard let name = u as? String, RoomID.isValidUser(name) else { throw fail(.badRequest, "'users' holds something not a user name") }
                    return name
                }
                return .keys(users: names, ref: ref)
            case "to_device":
                guard let list = object["messages"] as? [Any], (1...ChatLimits.maxToDeviceMessages).contains(list.count) else {
                    throw fail(.badRequest, "'messages' must be an array of 1 to \(ChatLimits.maxToDeviceMessages)")
                }
                let messages = try list.map { item -> ToDeviceMessage in
                    guard let m = item as? [String: Any] else { throw fail(.badRequest, "each message must be an object") }
                    let f = Fields(object: m, ref: ref)
                    let user = try f.user()
                    let device = try f.string("device")
                    guard ClientFrame.isValidDeviceID(device) else { throw fail(.badRequest, "'device' is not a device id") }
                    return ToDeviceMessage(user: user, device: device, payload: try f.opaque("payload", max: ChatLimits.maxPayloadBytes))
                }
                return .toDevice(messages: messages, ref: ref)
            case "to_device_ack": return .toDeviceAck(upto: try id("upto"), ref: ref)
            case "backup_put": return .backupPut(json: try opaque("backup", max: ChatLimits.maxBackupBytes), ref: ref)
            case "backup_get": return .backupGet(ref: ref)
            default:
                throw fail(.unknownType, "unknown type")
            }
        }
    }
}
