/* Connection-rate peer for the datapath benchmark: "server PORT" accepts, echoes one byte, closes;
 * "client IP PORT SECONDS" runs connect / 1 byte / read / close in a loop and prints connections/s and
 * errors, then the connections completed in each 100 ms of the run (comma-separated), from which the
 * caller can take a rate that a burst of other load on the machine moves less (lib.ts).
 * In C so the number measures the datapath, not a language runtime. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int server(int port) {
	int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	if (bind(s, (void *)&a, sizeof(a)) || listen(s, 1024)) { perror("server"); return 1; }
	printf("listening\n");
	fflush(stdout);
	for (;;) {
		int c = accept(s, NULL, NULL);
		char b;
		if (c < 0) continue;
		if (read(c, &b, 1) == 1) (void)!write(c, &b, 1);
		close(c);
	}
}

static int client(const char *ip, int port, double seconds) {
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, ip, &a.sin_addr);
	long n = 0, errors = 0;
	int slices = (int)(seconds * 10 + 0.5);
	if (slices < 1) slices = 1;
	long *per = calloc(slices, sizeof(long));
	double start = now(), end = start + seconds, t;
	while ((t = now()) < end) {
		int c = socket(AF_INET, SOCK_STREAM, 0);
		char b = 'x';
		if (connect(c, (void *)&a, sizeof(a)) == 0 && write(c, &b, 1) == 1 && read(c, &b, 1) == 1) {
			int i = (int)((t - start) * 10);
			n++;
			per[i < slices ? i : slices - 1]++;
		} else errors++;
		close(c);
	}
	printf("%.1f %ld ", n / (now() - start), errors);
	for (int i = 0; i < slices; i++) printf(i ? ",%ld" : "%ld", per[i]);
	printf("\n");
	free(per);
	return 0;
}

int main(int argc, char **argv) {
	if (argc == 3 && !strcmp(argv[1], "server")) return server(atoi(argv[2]));
	if (argc == 5 && !strcmp(argv[1], "client")) return client(argv[2], atoi(argv[3]), atof(argv[4]));
	fprintf(stderr, "usage: crr server PORT | crr client IP PORT SECONDS\n");
	return 2;
}
