/// Minimal JSON text writing for the frames the server sends. Encoding by hand
/// keeps the hot path free of Foundation's encoders and their allocations.
public enum JSONText {
    /// Appends `value` as a JSON string literal (with quotes) to `out`.
    public static func appendString(_ value: String, to out: inout String) {
        out.append("\"")
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out.append("\\\"")
            case "\\": out.append("\\\\")
            case "\n": out.append("\\n")
            case "\r": out.append("\\r")
            case "\t": out.append("\\t")
            case "\u{2028}": out.append("\\u2028")
            case "\u{2029}": out.append("\\u2029")
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out.append("\\u" + String(repeating: "0", count: 4 - hex.count) + hex)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out.append("\"")
    }

    /// A JSON string literal for `value`.
    public static func string(_ value: String) -> String {
        var out = ""
        out.reserveCapacity(value.utf8.count + 2)
        appendString(value, to: &out)
        return out
    }

    /// A JSON array of string literals.
    public static func stringArray(_ values: [String]) -> String {
        var out = "["
        for (i, v) in values.enumerated() {
            if i > 0 { out.append(",") }
            appendString(v, to: &out)
        }
        out.append("]")
        return out
    }
}
