# PostgreSQL from Debian's packages, for a machine that cannot pull postgres:17 from Docker Hub
# (deploy/compose.offline.yaml). It reads the official image's POSTGRES_USER / _PASSWORD / _DB
# and keeps its data in the same place, so deploy/postgres.env works unchanged.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# No cluster from the package's postinst: the entry point creates one with the env file's user.
RUN mkdir -p /etc/postgresql-common \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/*
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
