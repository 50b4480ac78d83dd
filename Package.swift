// swift-tools-version:6.0
import PackageDescription

// Dependencies are kept to the SwiftNIO family, swift-log, swift-service-lifecycle and
// swift-metrics with its Prometheus backend (operators' metrics; swift-metrics is small and
// swift-prometheus adds only swift-atomics, which NIO already brings): every addition costs
// every clean CI build.
let package = Package(
    name: "SecureChat",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "securechat", targets: ["Launcher"]),
        .executable(name: "securechat-gateway", targets: ["Gateway"]),
        .executable(name: "securechat-worker", targets: ["Worker"]),
        .executable(name: "securechat-coordinator", targets: ["Coordinator"]),
        .executable(name: "securechat-bench", targets: ["Bench"]),
        .executable(name: "securechat-fuzz", targets: ["Fuzz"]),
        .library(name: "Proto", targets: ["Proto"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // Only the load generator uses it: exact latency percentiles.
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
    ],
    targets: [
        // Debian's hiredis, used only as the RESP reader/formatter under SwiftNIO.
        .systemLibrary(name: "CHiredis", pkgConfig: "hiredis", providers: [.apt(["libhiredis-dev"])]),
        // Debian's OpenSSL libcrypto: scrypt (EVP_PBE_scrypt), SHA-256, CSPRNG.
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .target(
            name: "Proto",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(
            name: "ChatCore",
            dependencies: [
                "Proto", "CHiredis", "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .executableTarget(
            name: "Coordinator",
            dependencies: ["Proto", "ChatCore"]
        ),
        .executableTarget(
            name: "Worker",
            dependencies: [
                "Proto", "ChatCore",
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "Gateway",
            dependencies: [
                "Proto", "ChatCore",
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "Launcher",
            dependencies: ["ChatCore", "Proto", .product(name: "UnixSignals", package: "swift-service-lifecycle")]
        ),
        .executableTarget(
            name: "Bench",
            dependencies: [
                "Proto", "ChatCore",
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // Fuzz targets for the decoders (scripts/fuzz runs them under libFuzzer).
        .target(
            name: "Fuzzing",
            dependencies: ["Proto", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio")]
        ),
        .executableTarget(name: "Fuzz", dependencies: ["Fuzzing"]),
        .testTarget(name: "ProtoTests", dependencies: ["Proto", "Fuzzing", .product(name: "NIOTestUtils", package: "swift-nio")]),
        .testTarget(name: "WorkerTests", dependencies: ["Worker", "Proto"]),
        .testTarget(name: "ChatCoreTests", dependencies: ["ChatCore", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio")]),
        .testTarget(name: "CoordinatorTests", dependencies: ["Coordinator", "Proto", "ChatCore", .product(name: "NIOEmbedded", package: "swift-nio"),
                                                             .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "GatewayTests", dependencies: ["Gateway", "ChatCore", .product(name: "NIOEmbedded", package: "swift-nio"),
                                                         .product(name: "NIOWebSocket", package: "swift-nio")]),
    ],
    swiftLanguageModes: [.v6]
)
