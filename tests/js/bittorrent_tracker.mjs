// The npm `bittorrent-tracker` (v11) server with its default settings (HTTP, UDP over IPv4 and
// IPv6, WebSocket, stats page; announce interval 10 min), bound to loopback addresses only.
// For the swarm tests (tests/common/swarm.rs starts it):
//
//   node tests/js/bittorrent_tracker.mjs PACKAGE_DIR PORT HTTP_HOST UDP4_HOST UDP6_HOST
//
// It does what the package's own command line (bin/cmd.js) does, with two differences that
// change no tracker behaviour:
// * bin/cmd.js imports the package's index.js, which loads the WebRTC client too, and that
//   needs `node-datachannel`, a native module whose install step fetches a prebuilt binary or
//   libdatachannel's sources from outside the package registries (scripts/test installs the
//   package with --ignore-scripts). The server alone (server.js) needs none of it.
// * bin/cmd.js passes --udp-hostname to Server.listen() under the key `udp4`, which listen()
//   does not read (it reads `udp`), so the IPv4 UDP tracker would bind 0.0.0.0 whatever the
//   flag says. Here every socket binds the address given.
// Output: the same lines bin/cmd.js prints (listening addresses, then one line per announce
// event with the peer's address), which the test keeps in its log.
import { pathToFileURL } from 'node:url'
import path from 'node:path'

const [pkg, port, httpHost, udp4Host, udp6Host] = process.argv.slice(2)
if (!udp6Host) {
  console.error('usage: node bittorrent_tracker.mjs PACKAGE_DIR PORT HTTP_HOST UDP4_HOST UDP6_HOST')
  process.exit(2)
}
const { default: Server } = await import(pathToFileURL(path.join(pkg, 'server.js')).href)

// bin/cmd.js without flags: new Server({ http, udp, ws: true, stats: true, trustProxy: false }).
const server = new Server({ http: true, udp: true, ws: true, stats: true, trustProxy: false })
const log = line => console.log(`${new Date().toISOString()} ${line}`)
server.on('error', err => console.error(`${new Date().toISOString()} ERROR: ${err.message}`))
server.on('warning', err => log(`WARNING: ${err.message}`))
for (const event of ['start', 'update', 'complete', 'stop']) {
  server.on(event, addr => log(`${event}: ${addr}`))
}
server.listen(Number(port), { http: httpHost, udp: udp4Host, udp6: udp6Host }, () => {
  const http = server.http.address()
  log(`HTTP tracker: http://[${http.address}]:${http.port}/announce`)
  const udp4 = server.udp4.address()
  log(`UDP tracker: udp://${udp4.address}:${udp4.port}`)
  const udp6 = server.udp6.address()
  log(`UDP6 tracker: udp://[${udp6.address}]:${udp6.port}`)
  log('listening')
})
// The test kills the process; end cleanly on SIGTERM/SIGINT too.
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)))
