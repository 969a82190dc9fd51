// Reference detections of YuNet from libfacedetection's own C++ (the network exactly as
// `objectdetect_cnn` in src/facedetectcnn-model.cpp runs it), printed as JSON with the boxes,
// scores and landmarks in float (libfacedetection itself truncates them to int). The parity
// test of the Rust engine (`perception/tests/yunet.rs`) compares against this output.
//
// Build and run (tools/yunet_reference.py does both and writes the golden file):
//   g++ -O2 -std=c++11 -I SRC -I . tools/yunet_reference.cpp SRC/facedetectcnn.cpp \
//       SRC/facedetectcnn-data.cpp -o /tmp/yunet_reference
//   /tmp/yunet_reference image.ppm > detections.json
// where SRC is libfacedetection's src/ and the image a binary PPM (P6, RGB, 8 bits).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <utility>
#include <vector>
#include "facedetectcnn.h"

extern ConvInfoStruct param_pConvInfo[53];

static std::vector<unsigned char> read_ppm(const char* path, int& w, int& h) {
    FILE* f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", path); exit(1); }
    int maxv = 0;
    if (fscanf(f, "P6 %d %d %d", &w, &h, &maxv) != 3 || maxv != 255) { fprintf(stderr, "not a P6 PPM\n"); exit(1); }
    fgetc(f);
    std::vector<unsigned char> rgb(size_t(w) * h * 3);
    if (fread(rgb.data(), 1, rgb.size(), f) != rgb.size()) { fprintf(stderr, "short PPM\n"); exit(1); }
    fclose(f);
    // libfacedetection takes BGR.
    for (size_t i = 0; i < rgb.size(); i += 3) std::swap(rgb[i], rgb[i + 2]);
    return rgb;
}

int main(int argc, char** argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s image.ppm\n", argv[0]); return 2; }
    int w = 0, h = 0;
    std::vector<unsigned char> bgr = read_ppm(argv[1], w, h);
    Filters<float> F[53];
    for (int i = 0; i < 53; i++) F[i] = param_pConvInfo[i];

    auto fx = setDataFrom3x3S2P1to1x1S1P0FromImage(bgr.data(), w, h, 3, w * 3);
    fx = convolution(fx, F[0]);
    fx = convolutionDP(fx, F[1], F[2]);
    fx = maxpooling2x2S2(fx);
    fx = convolution4layerUnit(fx, F[3], F[4], F[5], F[6]);
    fx = convolution4layerUnit(fx, F[7], F[8], F[9], F[10]);
    fx = maxpooling2x2S2(fx);
    auto fb1 = convolution4layerUnit(fx, F[11], F[12], F[13], F[14]);
    fx = maxpooling2x2S2(fb1);
    auto fb2 = convolution4layerUnit(fx, F[15], F[16], F[17], F[18]);
    fx = maxpooling2x2S2(fb2);
    auto fb3 = convolution4layerUnit(fx, F[19], F[20], F[21], F[22]);
    CDataBlob<float> reg[3], cls[3], kps[3], obj[3];
    fb3 = convolutionDP(fb3, F[27], F[28]);
    cls[2] = convolutionDP(fb3, F[33], F[34], false);
    reg[2] = convolutionDP(fb3, F[39], F[40], false);
    kps[2] = convolutionDP(fb3, F[51], F[52], false);
    obj[2] = convolutionDP(fb3, F[45], F[46], false);
    fb2 = elementAdd(upsampleX2(fb3), fb2);
    fb2 = convolutionDP(fb2, F[25], F[26]);
    cls[1] = convolutionDP(fb2, F[31], F[32], false);
    reg[1] = convolutionDP(fb2, F[37], F[38], false);
    kps[1] = convolutionDP(fb2, F[49], F[50], false);
    obj[1] = convolutionDP(fb2, F[43], F[44], false);
    fb1 = elementAdd(upsampleX2(fb2), fb1);
    fb1 = convolutionDP(fb1, F[23], F[24]);
    cls[0] = convolutionDP(fb1, F[29], F[30], false);
    reg[0] = convolutionDP(fb1, F[35], F[36], false);
    kps[0] = convolutionDP(fb1, F[47], F[48], false);
    obj[0] = convolutionDP(fb1, F[41], F[42], false);

    // Decode as bbox_decode/kps_decode and score as detection_output (sqrt(cls * obj)),
    // keeping floats; then the same greedy NMS (IoU 0.45, scores >= 0.2 only, top 1000).
    struct Cand { float score, box[4], lm[10]; };
    std::vector<Cand> cands;
    const int strides[3] = {8, 16, 32};
    for (int l = 0; l < 3; l++) {
        float s = float(strides[l]);
        for (int r = 0; r < cls[l].rows; r++)
            for (int c = 0; c < cls[l].cols; c++) {
                float pc = 1.f / (1.f + std::exp(-cls[l].ptr(r, c)[0]));
                float po = 1.f / (1.f + std::exp(-obj[l].ptr(r, c)[0]));
                float conf = std::sqrt(pc * po);
                if (conf < 0.2f) continue;
                const float* b = reg[l].ptr(r, c);
                const float* k = kps[l].ptr(r, c);
                float px = c * s, py = r * s;
                float cx = b[0] * s + px, cy = b[1] * s + py;
                float bw = std::exp(b[2]) * s, bh = std::exp(b[3]) * s;
                Cand cand;
                cand.score = conf;
                cand.box[0] = cx - bw / 2.f; cand.box[1] = cy - bh / 2.f;
                cand.box[2] = cx + bw / 2.f; cand.box[3] = cy + bh / 2.f;
                for (int n = 0; n < 5; n++) {
                    cand.lm[2 * n] = k[2 * n] * s + px;
                    cand.lm[2 * n + 1] = k[2 * n + 1] * s + py;
                }
                cands.push_back(cand);
            }
    }
    std::stable_sort(cands.begin(), cands.end(), [](const Cand& a, const Cand& b) { return a.score > b.score; });
    if (cands.size() > 1000) cands.resize(1000);
    auto iou = [](const float* a, const float* b) {
        float w = std::min(a[2], b[2]) - std::max(a[0], b[0]);
        float h = std::min(a[3], b[3]) - std::max(a[1], b[1]);
        if (w <= 0 || h <= 0) return 0.f;
        float inter = w * h;
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter);
    };
    std::vector<Cand> kept;
    for (const Cand& c : cands) {
        bool keep = true;
        for (const Cand& k : kept) if (iou(c.box, k.box) > 0.45f) { keep = false; break; }
        if (keep) kept.push_back(c);
    }
    printf("{\"width\":%d,\"height\":%d,\"faces\":[", w, h);
    for (size_t i = 0; i < kept.size(); i++) {
        const Cand& c = kept[i];
        printf("%s\n{\"score\":%.6f,\"box\":[%.4f,%.4f,%.4f,%.4f],\"landmarks\":[", i ? "," : "", c.score,
               c.box[0], c.box[1], c.box[2], c.box[3]);
        for (int n = 0; n < 10; n++) printf("%s%.4f", n ? "," : "", c.lm[n]);
        printf("]}");
    }
    printf("\n]}\n");
    return 0;
}
