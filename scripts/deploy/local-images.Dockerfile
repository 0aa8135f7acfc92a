# Local stand-ins for the public images the deployment uses besides our own, for a machine with
# no container registry (the deployment test, scripts/deploy/compose_test.py). Each one is
# built from a Debian bookworm base made with debootstrap and Debian's package of the same
# program, and behaves as the public image does under docker-compose.yml (entrypoint, user,
# working directory, environment):
#
#   redis   for redis:7.2-alpine      (Debian's redis-server 7.0; runs as user redis in /data)
#   caddy   for caddy:2.10-alpine     (Debian's caddy 2.6; the base of our `caddy` target)
#   coturn  for coturn/coturn:4.6     (Debian's coturn 4.6; entrypoint turnserver, user nobody,
#                                      state in /var/lib/coturn as there)
#
# The runtime base of our own images (distroless/cc) is the debootstrap base itself.
ARG BASE=localhost/hermes-dt-base:bookworm

FROM ${BASE} AS redis
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]

FROM ${BASE} AS caddy
RUN apt-get update \
    && apt-get install -y --no-install-recommends caddy \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && mkdir -p /config /data /srv /etc/caddy
ENV XDG_CONFIG_HOME=/config \
    XDG_DATA_HOME=/data
VOLUME ["/config", "/data"]
WORKDIR /srv
EXPOSE 80/tcp 443/tcp 443/udp
CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]

FROM ${BASE} AS coturn
RUN apt-get update \
    && apt-get install -y --no-install-recommends coturn \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && rm -rf /var/lib/turn && ln -s /var/lib/coturn /var/lib/turn
USER nobody:nogroup
ENTRYPOINT ["turnserver"]
