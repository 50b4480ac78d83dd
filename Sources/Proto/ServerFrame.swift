/// Frames the server sends, encoded as the JSON text of protocol.md.
public enum ServerFrame: Sendable {
    /// `rooms` is the JSON array of the user's room objects.
    case welcome(user: String, room: String, online: [String], history: [ChatMessage], rooms: String)
    case message(ChatMessage)
    case presence(user: String, online: Bool)
    case ack(ref: String?, id: MessageID)
    case error(code: String, message: String, ref: String?, retryAfterMs: Int?)
    case synced(room: String, recovered: Bool)
    /// `{"type":"ok","ref":…}`
    case ok(ref: String?)
    /// A reply or event of any other type: `fields` is the JSON fragment after `type` and `ref`.
    case object(type: String, ref: String?, fields: String)

    /// The frame's JSON text.
    public var json: String {
        switch self {
        case let .welcome(user, room, online, history, rooms):
            var out = "{\"type\":\"welcome\",\"user\":"
            JSONText.appendString(user, to: &out)
            out.append(",\"room\":")
            JSONText.appendString(room, to: &out)
            out.append(",\"online\":")
            out.append(JSONText.stringArray(online.sorted()))
            out.append(",\"history\":[")
            for (i, m) in history.enumerated() {
                if i > 0 { out.append(",") }
                out.append(m.json)
            }
            out.append("],\"rooms\":")
            out.append(rooms)
            out.append("}")
            return out
        case let .message(m):
            return m.json
        case let .presence(user, online):
            return "{\"type\":\"presence\",\"user\":\(JSONText.string(user)),\"online\":\(online)}"
        case let .ack(ref, id):
            let r = ref.map { JSONText.string($0) } ?? "null"
            return "{\"type\":\"ack\",\"ref\":\(r),\"id\":\"\(id)\"}"
        case let .error(code, message, ref, retry):
            var out = "{\"type\":\"error\",\"code\":\(JSONText.string(code)),\"message\":\(JSONText.string(message))"
            if let ref { out.append(",\"ref\":\(JSONText.string(ref))") }
            if let retry { out.append(",\"retry_after_ms\":\(retry)") }
            out.append("}")
            return out
        case let .synced(room, recovered):
            return "{\"type\":\"synced\",\"room\":\(JSONText.string(room)),\"recovered\":\(recovered)}"
        case let .ok(ref):
            return "{\"type\":\"ok\",\"ref\":\(ref.map { JSONText.string($0) } ?? "null")}"
        case let .object(type, ref, fields):
            var out = "{\"type\":" + JSONText.string(type)
            if let ref { out.append(",\"ref\":" + JSONText.string(ref)) }
            if !fields.isEmpty { out.append("," + fields) }
            out.append("}")
            return out
        }
    }
}
