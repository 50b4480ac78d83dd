import Foundation
import Logging

/// One line per event on stderr, as swift-log's `StreamLogHandler` writes them, but with the
/// time in UTC to the millisecond (`2026-12-02T03:38:20.123Z`): a failover is over in a few
/// seconds, and whole seconds could not tell which of two processes noticed first.
///
/// Each line goes out with `write(2)` straight away (one call for lines up to `PIPE_BUF`, so
/// lines of processes sharing one log do not mix); a line stderr does not take (closed, a
/// reader gone) is dropped, never a crash.
public struct LineLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String

    public init(label: String, metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider) {
        self.label = label
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let explicit = event.metadata { merged.merge(explicit) { _, new in new } }
        if let error = event.error {
            merged["error.message"] = "\(error)"
            merged["error.type"] = "\(String(reflecting: type(of: error)))"
        }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let text = Self.line(epochSeconds: Int(now.tv_sec), millisecond: Int(now.tv_nsec / 1_000_000), level: event.level,
                             label: label, metadata: merged, source: event.source, message: event.message.description)
        Self.writeToStandardError(text)
    }

    private static func writeToStandardError(_ text: String) {
        var text = text
        text.withUTF8 { bytes in
            guard var p = bytes.baseAddress else { return }
            var left = bytes.count
            while left > 0 {
                let n = write(STDERR_FILENO, p, left)
                if n > 0 {
                    p += n
                    left -= n
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
    }

    /// `2026-12-02T03:38:20.123Z info securechat.worker: k=v [Source] message`, newline-ended.
    static func line(epochSeconds: Int, millisecond: Int, level: Logger.Level, label: String, metadata: Logger.Metadata,
                     source: String, message: String) -> String {
        let pretty = metadata.sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined()
        return "\(timestamp(epochSeconds: epochSeconds, millisecond: millisecond)) \(level)\(label.isEmpty ? "" : " ")\(label):\(pretty) [\(source)] \(message)\n"
    }

    /// ISO 8601 in UTC, to the millisecond.
    static func timestamp(epochSeconds: Int, millisecond: Int) -> String {
        var seconds = time_t(epochSeconds)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1,
                      Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), min(999, max(0, millisecond)))
    }
}
