# Thin driver over CMake. `make` builds build/qnext and build/libqnext.a.
BUILD ?= build
MAKEFLAGS += --no-print-directory
JOBS ?= $(shell nproc)

.PHONY: all deps demo test test-asan clean
all: $(BUILD)/Makefile
	@cmake --build $(BUILD) -j $(JOBS)

$(BUILD)/Makefile: CMakeLists.txt
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null

# Installs the Debian packages the build needs when they are missing (needs root or sudo).
deps:
	@./tools/install_deps.sh

demo: deps all
	@./tools/demo.sh

test: deps all
	@cd $(BUILD) && ctest --output-on-failure -j 2

# The same suite under AddressSanitizer and UndefinedBehaviorSanitizer.
test-asan: deps
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DQNEXT_SANITIZE=ON >/dev/null
	@cmake --build build-asan -j $(JOBS)
	@cd build-asan && QNEXT_ASAN=1 ctest --output-on-failure -j 2

clean:
	rm -rf $(BUILD) build-asan
