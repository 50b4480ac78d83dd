import Logging
import NIOCore
import NIOEmbedded
import NIOWebSocket
import XCTest
import ChatCore

@testable import Gateway

/// What a client's TLS handler is given: the frames of one flush gathered into one buffer
/// (one `SSL_write`, one TLS record), in order, ahead of frames written directly.
final class StreamWriteTests: XCTestCase {
    private func stream(maxQueuedFrames: Int = 4, maxQueuedBytes: Int = 1 << 20) throws -> (EmbeddedChannel, GatewayStreamHandler) {
        let handler = GatewayStreamHandler(limits: StreamLimits(maxQueuedFrames: maxQueuedFrames, maxQueuedBytes: maxQueuedBytes,
                                                                pingInterval: .seconds(30)),
                                           logger: Logger(label: "test"))
        let channel = EmbeddedChannel(handler: handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, handler)
    }

    private func text(_ s: String) -> ByteBuffer { WebSocketWire.text(ByteBuffer(string: s)) }

    func testOneFrameIsWrittenAsItIs() throws {
        let (channel, handler) = try stream()
        let frame = text("one")
        handler.sendFramed(frame)
        XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self), "nothing is written before the flush")
        handler.flushIfNeeded()
        XCTAssertEqual(try channel.readOutbound(as: ByteBuffer.self), frame)
        XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self))
    }

    func testFramesOfOneFlushLeaveAsOneWriteInOrder() throws {
        let (channel, handler) = try stream()
        let frames = ["a", "bb", "ccc"].map(text)
        for f in frames { handler.sendFramed(f) }
        handler.flushIfNeeded()
        var expected = ByteBuffer()
        for var f in frames { expected.writeBuffer(&f) }
        XCTAssertEqual(try channel.readOutbound(as: ByteBuffer.self), expected)
        XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self))
        // The shared frames themselves are untouched (other clients write the same bytes).
        XCTAssertEqual(frames[0], text("a"))
    }

    func testGatheringIsBoundedInBytes() throws {
        let (channel, handler) = try stream()
        let big = text(String(repeating: "x", count: 40_000))
        handler.sendFramed(big)
        handler.sendFramed(big)  // 80 KB would pass the 64 KiB bound: the first goes on its own
        handler.flushIfNeeded()
        XCTAssertEqual(try channel.readOutbound(as: ByteBuffer.self), big)
        XCTAssertEqual(try channel.readOutbound(as: ByteBuffer.self), big)
        XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self))
    }

    func testGatheredFramesGoAheadOfAPing() throws {
        let (channel, handler) = try stream()
        handler.sendFramed(text("first"))
        handler.ping(interval: .seconds(30), now: .now())
        XCTAssertEqual(try channel.readOutbound(as: ByteBuffer.self), text("first"))
        let ping = try XCTUnwrap(channel.readOutbound(as: ByteBuffer.self))
        XCTAssertEqual(ping.getInteger(at: 0, as: UInt8.self), 0x89, "a ping frame, after the message")
    }

    func testTheQueueIsBoundedInBytesAsWellAsFrames() throws {
        let (channel, handler) = try stream(maxQueuedFrames: 1024, maxQueuedBytes: 65536)
        channel.isWritable = false
        let big = text(String(repeating: "b", count: 8000))
        for _ in 0..<8 { handler.sendFramed(big) }   // 64 KB: still within the bound
        XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self))
        handler.sendFramed(big)                      // the ninth passes 64 KiB, far below 1024 frames
        let close = try XCTUnwrap(channel.readOutbound(as: ByteBuffer.self))
        XCTAssertEqual(close.getInteger(at: 2, as: UInt16.self), 4008)
    }

    func testAClientThatDoesNotReadIsClosedWith4008() throws {
        let (channel, handler) = try stream()
        channel.isWritable = false
        for i in 0..<5 { handler.sendFramed(text("m\(i)")) }  // the queue holds 4
        let close = try XCTUnwrap(channel.readOutbound(as: ByteBuffer.self))
        XCTAssertEqual(close.getInteger(at: 0, as: UInt8.self), 0x88)
        XCTAssertEqual(close.getInteger(at: 2, as: UInt16.self), 4008)
    }

    private func maskedPing(_ text: String) -> WebSocketFrame {
        let key = WebSocketMaskingKey([1, 2, 3, 4])!
        var data = ByteBuffer(string: text)
        data.webSocketMask(key)
        return WebSocketFrame(fin: true, opcode: .ping, maskKey: key, data: data)
    }

    func testAPingFloodThatDoesNotReadHoldsOnePong() throws {
        let (channel, _) = try stream()
        try channel.writeInbound(maskedPing("now"))
        let pong = try XCTUnwrap(channel.readOutbound(as: ByteBuffer.self), "a reading client gets its pong at once")
        XCTAssertEqual(pong, WebSocketWire.frame(opcode: .pong, payload: ByteBuffer(string: "now")))
        channel.isWritable = false
        for i in 0..<1000 { try channel.writeInbound(maskedPing("p\(i)")) }
        XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self), "nothing is queued while the client does not read")
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        XCTAssertEqual(try channel.readOutbound(as: ByteBuffer.self), WebSocketWire.frame(opcode: .pong, payload: ByteBuffer(string: "p999")))
        XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self), "one pong, for the latest ping")
    }
}

final class UsersStoreTests: XCTestCase {
    func testUnknownNamesCostWhatTheRealHashesCost() throws {
        var file = UsersFile()
        file.users["a"] = try PasswordHash.make(password: "x", logN: 10)
        file.users["b"] = try PasswordHash.make(password: "y", logN: 10)
        file.users["c"] = try PasswordHash.make(password: "z", logN: 11)
        let dummy = try UsersStore.dummy(like: file)
        XCTAssertEqual([dummy.logN, dummy.r, dummy.p], [10, 8, 1], "the parameters most users have")
        XCTAssertEqual(try UsersStore.dummy(like: UsersFile()).logN, PasswordHash.defaultLogN)
    }
}
