import Foundation

/// The limits of the client contract (protocol.md).
public enum ChatLimits {
    /// Largest text in Unicode scalar values, after trimming.
    public static let maxTextScalars = 2000
    /// Largest WebSocket message a client may send; larger closes with 1009.
    public static let maxFrameBytes = 64 * 1024
    /// Longest client `ref` we remember.
    public static let maxRefBytes = 128
    /// The only room of v1.
    public static let lobby = "lobby"
}

/// A frame a client sent, after validation.
public enum ClientFrame: Equatable, Sendable {
    case send(text: String, ref: String?, room: String)
    case sync(since: MessageID, room: String)
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
        var room = ChatLimits.lobby
        if let rawRoom = object["room"] {
            guard let r = rawRoom as? String else {
                return .failure(.init(.badRequest, "'room' must be a string", ref: ref))
            }
            guard r == ChatLimits.lobby else {
                return .failure(.init(.badRequest, "unknown room", ref: ref))
            }
            room = r
        }
        switch type {
        case "send":
            guard let raw = object["text"] as? String else {
                return .failure(.init(.badRequest, "missing string field 'text'", ref: ref))
            }
            let text = trimUnicodeWhitespace(raw)
            if text.isEmpty { return .failure(.init(.empty, "message is empty", ref: ref)) }
            if text.unicodeScalars.count > ChatLimits.maxTextScalars {
                return .failure(.init(.tooLong, "message is longer than \(ChatLimits.maxTextScalars) characters", ref: ref))
            }
            return .success(.send(text: text, ref: ref, room: room))
        case "sync":
            guard let since = object["since"] as? String, let id = MessageID(since) else {
                return .failure(.init(.badRequest, "'since' must be a message id", ref: ref))
            }
            return .success(.sync(since: id, room: room))
        default:
            return .failure(.init(.unknownType, "unknown type", ref: ref))
        }
    }

    /// Trims leading and trailing Unicode White_Space.
    public static func trimUnicodeWhitespace(_ s: String) -> String {
        let scalars = s.unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        return String(scalars[first...last])
    }
}
